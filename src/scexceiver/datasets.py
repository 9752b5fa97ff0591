"""Small datasets bundled with scexceiver (no downloads)."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata
import numpy as np
import pandas as pd
import scanpy as sc
from scipy import sparse

__all__ = ["pbmc3k", "pbmc68k_reduced"]


def pbmc3k() -> anndata.AnnData:
    """Load the bundled 10x Genomics PBMC 3k raw counts with derived cell-type labels.

    2,700 peripheral blood mononuclear cells x 32,738 genes from the 10x Genomics
    "3k PBMCs from a Healthy Donor" dataset (CC BY 4.0), shipped inside the package; nothing
    is downloaded. Every call reads the file again and returns a new, independent object.

    Returns
    -------
    anndata.AnnData
        ``X``: raw UMI counts, :class:`scipy.sparse.csr_matrix` of ``float32``.
        ``var_names``: gene symbols; ``var["gene_ids"]``: Ensembl IDs;
        ``var["gene_symbols"]``: gene symbols.
        ``obs["cell_type"]``: categorical label (CD4 T, CD8 T, NK, B, CD14 Monocyte,
        FCGR3A Monocyte, Dendritic, Megakaryocyte); ``obs["cell_type_marker_argmax"]``:
        the per-cell marker-score argmax it was derived from.
        ``uns["cell_type_derivation"]``: how the labels were made.

    Notes
    -----
    The cell-type labels are **not** ground truth: they are derived from canonical marker
    genes (per-cell marker-score argmax, then majority vote within Leiden clusters) by
    ``scripts/make_pbmc3k.py`` in the scexceiver repository.

    Examples
    --------
    >>> from scexceiver.datasets import pbmc3k
    >>> adata = pbmc3k()
    >>> adata.shape
    (2700, 32738)
    """
    resource = files("scexceiver") / "_bundled" / "pbmc3k.h5ad"
    with as_file(resource) as path:
        return anndata.read_h5ad(path)


def pbmc68k_reduced() -> anndata.AnnData:
    """Raw counts of the 10x PBMC 68k subset that ships with scanpy, with its cell types.

    :func:`scanpy.datasets.pbmc68k_reduced` (a file inside every scanpy installation;
    nothing is downloaded) holds 700 cells with log-normalised values of 765 genes in
    ``raw.X`` and each cell's total count over the full panel in ``obs["n_counts"]``. The
    counts are recovered exactly as ``round(expm1(raw.X) * n_counts / 1e4)`` (the largest
    rounding residue is below 0.1, float32 precision).

    Returns
    -------
    anndata.AnnData
        ``X``: raw UMI counts of the 765 genes, :class:`scipy.sparse.csr_matrix` of
        ``float32``; ``var_names``: gene symbols. ``obs["bulk_labels"]``: the 10 published
        cell types (from the FACS-sorted reference profiles of Zheng et al. 2017);
        ``obs["n_counts"]``: total counts over the original panel (library sizes over the
        765 genes here are about a fifth of that).

    Examples
    --------
    >>> from scexceiver.datasets import pbmc68k_reduced
    >>> pbmc68k_reduced().shape
    (700, 765)
    """
    reduced = sc.datasets.pbmc68k_reduced()
    log_values = reduced.raw.X.toarray()
    n_counts = reduced.obs["n_counts"].to_numpy(dtype=np.float64)
    counts = np.rint(np.expm1(log_values.astype(np.float64)) * n_counts[:, None] / 1e4)
    return anndata.AnnData(
        X=sparse.csr_matrix(counts.astype(np.float32)),
        obs=pd.DataFrame(
            {"bulk_labels": reduced.obs["bulk_labels"], "n_counts": n_counts},
            index=reduced.obs_names,
        ),
        var=pd.DataFrame(index=reduced.raw.var_names),
    )
