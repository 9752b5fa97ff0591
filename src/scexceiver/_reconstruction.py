"""Per-gene quality of the decoder's reconstruction against the gene-mean baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from scvi import REGISTRY_KEYS

from ._constants import COUNTS, GENE_IDX, TOKEN_MASK
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
    train_mean = _processed(model, None, model.train_indices, positions)[0].mean(0)
    observed, counts = _processed(model, adata, indices, positions)
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
    model, adata: AnnData | None, indices, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Processed values and raw counts (cells, genes) of vocabulary ``positions``."""
    adata = model._validate_anndata(adata)
    x = model.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
    rows = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
    order = np.argsort(rows, kind="stable")  # backed matrices read sorted rows only
    x = sparse.csr_matrix(x[rows[order]])[np.argsort(order)]
    counts = torch.as_tensor(x[:, positions].toarray(), dtype=torch.float32)
    library = torch.as_tensor(np.asarray(x.sum(1)).ravel(), dtype=torch.float32)
    normalizer = model.module.normalizer
    device = normalizer.mean.device
    values = normalizer(
        counts.to(device),
        library.to(device),
        torch.as_tensor(positions, device=device).expand(counts.shape[0], -1),
    )
    return values.float().cpu().numpy(), counts.numpy()


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
