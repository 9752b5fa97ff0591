"""Plots (scanpy style: draw and return the axes)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes

from ._interpretation import gene_positions, rank_attention


def training_curves(model, *, ax: Axes | None = None) -> Axes:
    """Plot training and validation loss per epoch from ``model.history``.

    Parameters
    ----------
    model
        A trained :class:`~scexceiver.ExceiverModel`.
    ax
        Axes to draw into; a new figure by default.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    history = model.history
    for key, label in (("train_loss", "train"), ("validation_loss", "validation")):
        if key in history:
            series = history[key][key]
            ax.plot(series.index, series.to_numpy(), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE of processed values)")
    ax.legend(frameon=False)
    return ax


def gene_embedding_umap(
    model,
    genes: Sequence[str],
    *,
    background: Sequence[str] | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    ax: Axes | None = None,
) -> Axes:
    """UMAP of gene embeddings (cosine kNN graph), with chosen genes labelled.

    Parameters
    ----------
    model
        A trained :class:`~scexceiver.ExceiverModel`.
    genes
        Gene keys to highlight and label.
    background
        Gene keys drawn in grey as context; all genes of the vocabulary by default
        (UMAP time grows with their number).
    n_neighbors
        Neighbours of the kNN graph.
    seed
        Seed of the UMAP layout.
    ax
        Axes to draw into; a new figure by default.
    """
    genes = [str(g) for g in genes]
    keys = list(model.gene_vocabulary_.keys) if background is None else list(background)
    keys = list(dict.fromkeys([*keys, *genes]))
    from umap import UMAP

    embedding = model.get_gene_embeddings()[gene_positions(model, keys)].astype(np.float32)
    # umap-learn's own neighbour search: scanpy's pynndescent path (cosine, > 4,096
    # genes) fails on csr_array graphs with pynndescent 0.7
    layout = UMAP(n_neighbors=n_neighbors, metric="cosine", random_state=seed)
    xy = pd.DataFrame(layout.fit_transform(embedding), index=keys)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(xy[0], xy[1], s=2, c="lightgrey", rasterized=True)
    ax.scatter(xy.loc[genes, 0], xy.loc[genes, 1], s=12, c="tab:red")
    for gene in genes:
        ax.annotate(gene, (xy.loc[gene, 0], xy.loc[gene, 1]), fontsize=8)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def attention_heatmap(
    adata: AnnData,
    groupby: str,
    *,
    key: str = "exceiver_attention",
    n_genes: int = 5,
    ax: Axes | None = None,
) -> Axes:
    """Heatmap of mean attention per group for each group's most specific genes.

    Reads ``adata.varm[f"{key}_{groupby}"]`` written by
    :func:`scexceiver.tl.get_attention` with ``groupby``. For each group the ``n_genes``
    genes with the largest :func:`scexceiver.tl.rank_attention` score are shown; each
    column is scaled to its maximum over groups.

    Parameters
    ----------
    adata
        AnnData holding the per-group attention.
    groupby
        The ``groupby`` used in :func:`~scexceiver.tl.get_attention`.
    key
        Its ``key_added``.
    n_genes
        Genes per group.
    ax
        Axes to draw into; a new figure by default.
    """
    summary_key = f"{key}_{groupby}"
    if summary_key not in adata.varm:
        raise KeyError(
            f"adata.varm[{summary_key!r}] not found; run "
            f"scexceiver.tl.get_attention(model, adata, groupby={groupby!r}) first."
        )
    means = adata.varm[summary_key]
    ranked = rank_attention(means)
    genes = list(dict.fromkeys(g for group in means.columns for g in ranked[group][:n_genes]))
    values = means.loc[genes].T
    values = values / values.max(axis=0).replace(0, 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.3 * len(genes) + 2, 0.35 * len(means.columns) + 1.5))
    image = ax.imshow(values.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(genes)), genes, rotation=90, fontsize=8)
    ax.set_yticks(range(len(values.index)), values.index, fontsize=8)
    ax.figure.colorbar(image, ax=ax, label="mean attention (scaled per gene)")
    return ax
