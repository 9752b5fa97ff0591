"""Analysis helpers on embeddings (scanpy style)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

from ._interpretation import gene_neighbors, gene_similarity, get_attention, rank_attention
from ._reconstruction import reconstruction_quality

__all__ = [
    "batch_mixing",
    "gene_neighbors",
    "gene_similarity",
    "get_attention",
    "knn_label_accuracy",
    "rank_attention",
    "reconstruction_quality",
]


def knn_label_accuracy(
    embedding: np.ndarray,
    labels: np.ndarray,
    *,
    n_neighbors: int = 15,
    n_splits: int = 5,
    seed: int = 0,
) -> dict[str, float | dict[str, float]]:
    """Cross-validated kNN classification of labels from an embedding.

    Parameters
    ----------
    embedding
        (cells, dims) embedding, e.g. ``adata.obsm["X_exceiver"]``.
    labels
        (cells,) labels, e.g. cell types.
    n_neighbors
        Neighbours of the kNN classifier (Euclidean).
    n_splits
        Stratified folds.
    seed
        Seed of the fold split.

    Returns
    -------
    dict
        ``accuracy`` and ``macro_f1`` over held-out folds, ``majority`` (the accuracy of
        always predicting the most frequent label) as the chance level, and
        ``f1_per_label``: each label's F1 (their mean is ``macro_f1``), which shows a
        small population the embedding loses however high the accuracy.
    """
    labels = np.asarray(labels)
    predicted = np.empty_like(labels)
    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in folds.split(embedding, labels):
        knn = KNeighborsClassifier(n_neighbors=n_neighbors).fit(embedding[train], labels[train])
        predicted[test] = knn.predict(embedding[test])
    names, counts = np.unique(labels, return_counts=True)
    per_label = f1_score(labels, predicted, labels=names, average=None)
    return {
        "accuracy": float(np.mean(predicted == labels)),
        "macro_f1": float(per_label.mean()),
        "majority": float(counts.max() / counts.sum()),
        "f1_per_label": {str(n): float(f) for n, f in zip(names, per_label, strict=True)},
    }


def batch_mixing(embedding: np.ndarray, batches: np.ndarray, *, n_neighbors: int = 30) -> float:
    """Batch mixing in the kNN graph, 0 (separated) to 1 (as mixed as chance).

    For each cell, the entropy of batch labels among its ``n_neighbors`` nearest
    neighbours is divided by the entropy of the global batch frequencies; the score is
    the mean over cells (a normalised kNN batch entropy, close in spirit to iLISI).

    Parameters
    ----------
    embedding
        (cells, dims) embedding.
    batches
        (cells,) batch labels; at least two batches.
    n_neighbors
        Neighbourhood size.

    Returns
    -------
    float
        Mean normalised batch entropy of the cells' neighbourhoods.
    """
    codes, batches = np.unique(np.asarray(batches), return_inverse=True)
    if codes.size < 2:
        raise ValueError("batch_mixing needs at least two batches.")
    knn = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(embedding)
    neighbours = knn.kneighbors(embedding, return_distance=False)[:, 1:]
    freq = np.stack([(batches[neighbours] == b).mean(axis=1) for b in range(codes.size)], axis=1)
    global_freq = np.bincount(batches) / batches.size
    with np.errstate(divide="ignore", invalid="ignore"):
        local = -np.nansum(np.where(freq > 0, freq * np.log(freq), 0.0), axis=1)
    return float(np.mean(local) / -np.sum(global_freq * np.log(global_freq)))
