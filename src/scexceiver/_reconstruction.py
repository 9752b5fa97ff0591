"""Per-gene quality of the decoder's reconstruction against the gene-mean baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ._constants import COUNTS, GENE_IDX, LIBRARY_SIZE, TOKEN_MASK
from ._interpretation import gene_positions


@torch.inference_mode()
def reconstruction_quality(
    model,
    genes: Sequence[str],
    adata: AnnData | None = None,
    indices: Sequence[int] | None = None,
    *,
    hide: bool = True,
    batch_size: int | None = None,
) -> pd.DataFrame:
    """MSE and Pearson correlation of predicted expression, per gene, on held-out cells.

    Each gene of ``genes`` is predicted for every cell by the decoder (queried as "may be
    zero", as :meth:`~scexceiver.ExceiverModel.predict_expression`) and compared with
    the cell's processed value (z-scored log CP10k + 1, with the model's statistics).
    The baseline predicts every cell at the gene's mean processed value over the
    model's training cells.

    Parameters
    ----------
    model
        A trained :class:`~scexceiver.ExceiverModel`.
    genes
        Gene keys to evaluate.
    adata
        AnnData set up like the training data; ``None`` uses the model's.
    indices
        Cells to evaluate; ``None`` uses ``model.validation_indices`` for the model's
        AnnData (held-out cells) and all cells otherwise.
    hide
        Remove ``genes`` from the encoder's input, so each is predicted from the rest of
        the cell only (masked reconstruction). With sparse tokens this is the training
        mask; with dense tokens (``paper`` preset) the hidden genes appear unexpressed.
        ``False`` gives the plain reconstruction of visible genes.
    batch_size
        Minibatch size.

    Returns
    -------
    pandas.DataFrame
        Indexed by gene: ``mse`` of the model, ``gene_mean_mse`` of the baseline,
        ``pearson`` between prediction and observed value across cells (NaN for a
        constant gene), ``detected`` (fraction of evaluated cells expressing it).
    """
    genes = [str(g) for g in genes]
    positions = gene_positions(model, genes)
    if indices is None and adata is None:
        indices = model.validation_indices
    query = torch.as_tensor(positions, dtype=torch.long)
    train_mean = _processed(model, model.train_indices, query, batch_size)[0].mean(0)
    observed, counts = _processed(model, indices, query, batch_size, adata)
    _, loader = model._inference_loader(adata, indices, batch_size)
    predicted = []
    for tensors in loader:
        if hide:
            tensors = _hide(tensors, query)
        predicted.append(model.module.sample(tensors, query).float().cpu())
    predicted = torch.cat(predicted).numpy()
    return pd.DataFrame(
        {
            "mse": ((predicted - observed) ** 2).mean(0),
            "gene_mean_mse": ((train_mean[None, :] - observed) ** 2).mean(0),
            "pearson": _pearson(predicted, observed),
            "detected": (counts > 0).mean(0),
        },
        index=pd.Index(genes, name="gene"),
    )


def _processed(
    model, indices, query: torch.Tensor, batch_size, adata: AnnData | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Processed values and raw counts (cells, m) of genes ``query``."""
    _, loader = model._inference_loader(adata, indices, batch_size)
    normalizer = model.module.normalizer
    device = normalizer.mean.device
    column = torch.full((model.module.n_genes + 1,), len(query), dtype=torch.long)
    column[query] = torch.arange(len(query))
    values, counts = [], []
    for tensors in loader:
        token_counts = tensors[COUNTS]
        query_counts = token_counts.new_zeros(token_counts.shape[0], len(query) + 1)
        query_counts.scatter_add_(1, column[tensors[GENE_IDX]], token_counts)
        query_counts = query_counts[:, :-1]
        processed = normalizer(
            query_counts.to(device),
            tensors[LIBRARY_SIZE].to(device),
            query.to(device).expand(query_counts.shape[0], -1),
        )
        values.append(processed.float().cpu())
        counts.append(query_counts)
    return torch.cat(values).numpy(), torch.cat(counts).numpy()


def _hide(tensors: dict, query: torch.Tensor) -> dict:
    """A copy of a tokenised minibatch where genes ``query`` are no longer tokens."""
    hidden = torch.isin(tensors[GENE_IDX], query)
    return {
        **tensors,
        TOKEN_MASK: tensors[TOKEN_MASK] & ~hidden,
        COUNTS: tensors[COUNTS].masked_fill(hidden, 0.0),
    }


def _pearson(predicted: np.ndarray, observed: np.ndarray) -> np.ndarray:
    p = predicted - predicted.mean(0)
    o = observed - observed.mean(0)
    denominator = np.sqrt((p**2).sum(0) * (o**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (p * o).sum(0) / denominator, np.nan)
