"""Checks of a user's AnnData before any work: raw counts, keys, genes, matrix types.

Every check reads the data without modifying it and without densifying a sparse
matrix: scipy sparse matrices are checked through their stored values, dense and
backed (on-disk) matrices a block of rows at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.abc import CSCDataset, CSRDataset
from scipy import sparse

from ._vocab import GeneVocabulary

#: Smallest fraction of a model's vocabulary a new AnnData must share with it.
MIN_GENE_OVERLAP = 0.5


@dataclass(frozen=True)
class CountsSummary:
    """What a scan of a count matrix found.

    Attributes
    ----------
    n_cells, n_genes
        Shape of the matrix.
    n_empty_cells
        Cells whose counts are all zero.
    n_empty_genes
        Genes with zero counts in every cell.
    """

    n_cells: int
    n_genes: int
    n_empty_cells: int
    n_empty_genes: int


def gene_keys(var: pd.DataFrame, gene_key: str | None) -> pd.Index:
    """Gene keys of ``var``: its index, or the ``gene_key`` column as strings.

    Parameters
    ----------
    var
        The ``var`` table of an AnnData.
    gene_key
        A ``var`` column of stable gene identifiers; ``None`` uses the index.

    Raises
    ------
    ValueError
        If the column is missing or has missing values.
    """
    if gene_key is None:
        return var.index
    if gene_key not in var.columns:
        raise ValueError(
            f"gene_key {gene_key!r} is not a column of var (columns: {list(var.columns)}). "
            "Pass an existing column, or gene_key=None to use var_names."
        )
    if var[gene_key].isna().any():
        raise ValueError(f"var[{gene_key!r}] has missing values; every gene needs a key.")
    return pd.Index(var[gene_key].astype(str))


def registered_gene_keys(adata, setup_args: dict) -> pd.Index:
    """Gene keys of ``adata`` (its RNA modality for a MuData) by scvi-tools setup arguments."""
    modality = (setup_args.get("modalities") or {}).get("rna_layer")
    var = adata.mod[modality].var if modality is not None else adata.var
    return gene_keys(var, setup_args.get("gene_key"))


def validate_setup(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    gene_key: str | None = None,
    allow_non_integer: bool = False,
    warn_empty: bool = True,
) -> CountsSummary:
    """Check that ``adata`` holds what :meth:`ExceiverModel.setup_anndata` registers.

    Parameters
    ----------
    adata
        The AnnData (for a MuData, its RNA modality).
    layer
        Layer of raw counts; ``None`` means ``X``.
    batch_key, labels_key
        ``obs`` columns that must exist without missing values.
    gene_key
        ``var`` column of gene keys; ``None`` means ``var_names``. Keys must be unique.
    allow_non_integer
        Accept non-integer counts (e.g. ambient-corrected counts). Negative and
        non-finite values are refused regardless.
    warn_empty
        Warn when some cells have zero counts.

    Returns
    -------
    CountsSummary
        Shape and empty cells / genes.

    Raises
    ------
    ValueError
        A missing layer or key, duplicate gene keys, missing batch or label values, an
        empty matrix, or values that are not raw counts; the message names the fix.
    TypeError
        A matrix type or dtype that the data loaders cannot read.
    """
    if adata.is_view:
        raise ValueError(
            "This AnnData is a view (e.g. adata[cells]); setup_anndata records its setup in "
            "adata.uns, which a view cannot hold. Pass a copy: adata = adata[cells].copy()."
        )
    check_obs_key(adata.obs, "batch_key", batch_key)
    check_obs_key(adata.obs, "labels_key", labels_key)
    GeneVocabulary.from_keys(gene_keys(adata.var, gene_key))
    return check_counts(
        counts_matrix(adata, layer),
        where=_where(layer),
        layers=list(adata.layers),
        allow_non_integer=allow_non_integer,
        warn_empty=warn_empty,
    )


def check_obs_key(obs: pd.DataFrame, name: str, key: str | None) -> None:
    """Check that ``obs[key]`` exists and has no missing values (nothing to do for ``None``).

    Raises
    ------
    ValueError
        If the column is missing or has missing values.
    """
    if key is None:
        return
    if key not in obs.columns:
        raise ValueError(f"{name} {key!r} is not a column of obs (columns: {list(obs.columns)}).")
    n_missing = int(obs[key].isna().sum())
    if n_missing:
        raise ValueError(
            f"obs[{key!r}] ({name}) has {n_missing} missing values; give every cell a "
            f"{name.removesuffix('_key').removesuffix('s')} or drop those cells."
        )


def counts_matrix(adata: AnnData, layer: str | None):
    """The matrix of ``adata`` that holds counts: ``X`` or ``layers[layer]``.

    Raises
    ------
    ValueError
        If the layer does not exist or ``X`` is empty.
    """
    if layer is None:
        if adata.X is None:
            raise ValueError(
                "adata.X is None; put raw counts in X or pass layer= the layer that holds "
                f"them (layers: {list(adata.layers)})."
            )
        return adata.X
    if layer not in adata.layers:
        raise ValueError(
            f"Layer {layer!r} is not in adata.layers (layers: {list(adata.layers)}); pass "
            "the layer that holds raw counts, or layer=None for X."
        )
    return adata.layers[layer]


def check_counts(
    x,
    *,
    where: str = "adata.X",
    layers: Sequence[str] = (),
    allow_non_integer: bool = False,
    warn_empty: bool = True,
    chunk_size: int = 2048,
) -> CountsSummary:
    """Check that ``x`` holds raw counts: finite, non-negative, integer, not all zero.

    Parameters
    ----------
    x
        (cells, genes) matrix: scipy CSR / CSC, dense numpy, or a backed (h5py / anndata
        on-disk sparse) dataset.
    where
        How to name the matrix in messages (e.g. ``"adata.layers['counts']"``).
    layers
        Layers of the AnnData, suggested in the message about non-count values.
    allow_non_integer
        Accept non-integer values.
    warn_empty
        Warn when some cells have zero counts.
    chunk_size
        Rows per block for dense and backed matrices.

    Returns
    -------
    CountsSummary
        Shape and empty cells / genes.
    """
    _check_type(x, where)
    n_cells, n_genes = x.shape
    if n_cells == 0 or n_genes == 0:
        raise ValueError(f"{where} has shape {x.shape}; it needs at least one cell and gene.")
    scan = _Scan(n_cells, n_genes)
    if sparse.issparse(x):
        scan.values(x.data)
        scan.sums(x)
    else:
        for start in range(0, n_cells, chunk_size):
            block = x[start : start + chunk_size]
            scan.values(block.data if sparse.issparse(block) else np.asarray(block))
            scan.sums(block, offset=start)
    scan.raise_problems(where, layers, allow_non_integer)
    n_empty_cells = int((scan.cell_sums == 0).sum())
    if n_empty_cells == n_cells:
        raise ValueError(f"Every cell in {where} has zero counts; there is nothing to model.")
    if n_empty_cells and warn_empty:
        warnings.warn(
            f"{n_empty_cells} of {n_cells} cells in {where} have zero counts. They are kept "
            "and all get one shared 'empty cell' embedding; remove them first with "
            "scanpy.pp.filter_cells(adata, min_counts=1) if that is not what you want.",
            UserWarning,
            stacklevel=3,
        )
    return CountsSummary(
        n_cells=n_cells,
        n_genes=n_genes,
        n_empty_cells=n_empty_cells,
        n_empty_genes=int((scan.gene_sums == 0).sum()),
    )


def require_finite(values: np.ndarray, what: str) -> np.ndarray:
    """Return ``values`` if all are finite; otherwise raise a clear error.

    Raises
    ------
    FloatingPointError
        If any value is NaN or infinite.
    """
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.unique(np.nonzero(bad.reshape(bad.shape[0], -1))[0])
        raise FloatingPointError(
            f"The {what} of {rows.size} of {values.shape[0]} cells are NaN or infinite, so "
            "none are returned. The model's weights are likely not finite (a diverged "
            "training run): retrain with a lower lr or precision='32-true', or load a saved "
            "model."
        )
    return values


class _Scan:
    """Accumulates value problems and row / column sums over blocks of a matrix."""

    def __init__(self, n_cells: int, n_genes: int) -> None:
        self.cell_sums = np.zeros(n_cells)
        self.gene_sums = np.zeros(n_genes)
        self.n_nonfinite = 0
        self.n_negative = 0
        self.n_non_integer = 0
        self.min_value = np.inf
        self.non_integer_example: float | None = None

    def values(self, data: np.ndarray) -> None:
        if data.size == 0 or np.issubdtype(data.dtype, np.integer):
            if data.size:
                self.n_negative += int((data < 0).sum())
                self.min_value = min(self.min_value, float(data.min()))
            return
        finite = np.isfinite(data)
        self.n_nonfinite += int(data.size - finite.sum())
        data = data[finite] if not finite.all() else data
        if data.size == 0:
            return
        self.n_negative += int((data < 0).sum())
        self.min_value = min(self.min_value, float(data.min()))
        fractional = data != np.round(data)
        n_fractional = int(fractional.sum())
        if n_fractional and self.non_integer_example is None:
            self.non_integer_example = float(data[fractional].flat[0])
        self.n_non_integer += n_fractional

    def sums(self, block, offset: int = 0) -> None:
        if self.n_nonfinite:
            return
        rows = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
        self.cell_sums[offset : offset + rows.size] = rows
        self.gene_sums += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()

    def raise_problems(self, where: str, layers: Sequence[str], allow_non_integer: bool) -> None:
        if self.n_nonfinite:
            raise ValueError(
                f"{where} has {self.n_nonfinite} NaN or infinite values; raw counts are "
                "finite. Fix or drop those entries (e.g. count matrices written with missing "
                "values) before setup."
            )
        hint = (
            f"Pass layer= the layer with raw counts (layers: {list(layers)})"
            if layers
            else "Put raw counts in X or in a layer and pass layer="
        )
        if self.n_negative:
            raise ValueError(
                f"{where} has {self.n_negative} negative values (minimum {self.min_value:.4g}); "
                "it looks scaled or batch-corrected, but Exceiver needs raw counts. "
                f"{hint}."
            )
        if self.n_non_integer and not allow_non_integer:
            raise ValueError(
                f"{where} has {self.n_non_integer} non-integer values (e.g. "
                f"{self.non_integer_example:.4g}); it looks log-normalised or scaled, but "
                f"Exceiver normalises raw counts itself. {hint}. If these are counts that are "
                "not whole numbers by design (e.g. ambient-corrected), pass "
                "allow_non_integer=True."
            )


def _check_type(x, where: str) -> None:
    if isinstance(x, sparse.sparray):
        raise TypeError(
            f"{where} is a scipy sparse array ({type(x).__name__}), which scvi-tools' data "
            "loaders do not read. Convert it to a sparse matrix: "
            "adata.X = scipy.sparse.csr_matrix(adata.X) (or the layer)."
        )
    supported = (np.ndarray, sparse.csr_matrix, sparse.csc_matrix, h5py.Dataset)
    if not isinstance(x, (*supported, CSRDataset, CSCDataset)):
        raise TypeError(
            f"{where} is a {type(x).__module__}.{type(x).__name__}; supported are dense "
            "numpy arrays, scipy CSR / CSC matrices and backed (on-disk) AnnData. Convert "
            "it, e.g. with scipy.sparse.csr_matrix(...)."
        )
    dtype = np.dtype(x.dtype)
    if dtype == np.bool_ or not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    ):
        raise TypeError(
            f"{where} has dtype {dtype}; counts must be integers or floats (int32/64, "
            "float16/32/64). Convert with .astype(numpy.float32)."
        )


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"
