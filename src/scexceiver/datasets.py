"""Small datasets bundled with scexceiver (no downloads)."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata

__all__ = ["pbmc3k"]


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
