"""Turn a sparse minibatch of raw counts into padded gene tokens, without densifying."""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

from scexceiver._constants import (
    COUNTS,
    GENE_IDX,
    GENE_PANEL,
    LIBRARY_SIZE,
    MEASURED_GENES,
    TOKEN_MASK,
)


def tokenize_counts(
    x: torch.Tensor | np.ndarray | sparse.spmatrix,
    gene_lookup: np.ndarray | torch.Tensor | None = None,
    n_genes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pad each cell's expressed genes into (gene index, count) tokens.

    Vectorised over the CSR structure (no Python loop over cells). Explicit zeros are
    dropped; each row's tokens are sorted by gene index; padding holds index
    ``n_genes`` and count 0.

    Parameters
    ----------
    x
        (cells, genes) raw counts: a torch sparse CSR tensor, a scipy sparse matrix, or
        a dense array.
    gene_lookup
        (genes,) vocabulary position of each column of ``x``, -1 for genes outside the
        vocabulary: tokens then carry vocabulary positions, genes outside it are dropped
        and do not count towards the library size. ``None``: columns are the vocabulary.
    n_genes
        Size of the vocabulary (the padding index); required with ``gene_lookup``,
        otherwise the number of columns of ``x``.

    Returns
    -------
    dict
        ``gene_idx`` (b, n) int64, ``counts`` (b, n) float32, ``token_mask`` (b, n) bool
        and ``library_size`` (b,) float32, with ``n`` the largest number of expressed
        genes.
    """
    crow, col, val, (n_cells, n_cols) = _csr_parts(x)
    lengths = crow.diff()
    row = torch.repeat_interleave(torch.arange(n_cells), lengths)
    keep = val != 0
    if gene_lookup is None:
        n_genes = n_cols
    else:
        if n_genes is None:
            raise ValueError("tokenize_counts needs n_genes (the vocabulary size) with a lookup.")
        col = torch.as_tensor(gene_lookup, dtype=torch.int64)[col]
        keep &= col >= 0
    if not bool(keep.all()):
        row, col, val = row[keep], col[keep], val[keep]
        lengths = torch.bincount(row, minlength=n_cells)
    starts = lengths.cumsum(0) - lengths
    pos = torch.arange(col.numel()) - starts[row]
    n_max = int(lengths.max()) if n_cells else 0
    gene_idx = torch.full((n_cells, n_max), n_genes, dtype=torch.int64)
    counts = torch.zeros((n_cells, n_max), dtype=torch.float32)
    gene_idx[row, pos] = col
    counts[row, pos] = val
    gene_idx, order = gene_idx.sort(dim=1)
    counts = counts.gather(1, order)
    library_size = torch.zeros(n_cells, dtype=torch.float32).index_add_(0, row, val)
    return {
        GENE_IDX: gene_idx,
        COUNTS: counts,
        TOKEN_MASK: gene_idx < n_genes,
        LIBRARY_SIZE: library_size,
    }


def _csr_parts(x) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    if isinstance(x, torch.Tensor):
        if x.layout != torch.sparse_csr:
            x = x.to_sparse_csr()
        return (
            x.crow_indices().long(),
            x.col_indices().long(),
            x.values().float(),
            tuple(x.shape),
        )
    x = sparse.csr_matrix(x)
    return (
        torch.from_numpy(x.indptr.astype(np.int64)),
        torch.from_numpy(x.indices.astype(np.int64)),
        torch.from_numpy(x.data.astype(np.float32)),
        x.shape,
    )


def collate_tokens(
    batch: dict,
    gene_lookup: np.ndarray | None = None,
    n_genes: int | None = None,
    measured_genes: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """Collate function for scvi-tools' dataset: replace ``X`` by gene tokens.

    Other registered fields (batch, labels) are converted to tensors unchanged.
    ``gene_lookup`` and ``n_genes`` map the data's columns onto a model's vocabulary
    (see :func:`tokenize_counts`). ``measured_genes``, a (panels, vocabulary) boolean
    table, adds each cell's row of it (by its registered gene panel code) as
    ``measured_genes`` (b, vocabulary): the genes its source measured.
    """
    out = {
        key: torch.as_tensor(value) for key, value in batch.items() if key != REGISTRY_KEYS.X_KEY
    }
    out.update(tokenize_counts(batch[REGISTRY_KEYS.X_KEY], gene_lookup, n_genes))
    if measured_genes is not None:
        codes = np.asarray(batch[GENE_PANEL]).astype(np.int64).ravel()
        out[MEASURED_GENES] = torch.from_numpy(measured_genes[codes])
    return out
