"""Gene panels: which genes each source of a corpus measured."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ._validate import check_obs_key


def check_gene_panels(adata: AnnData, gene_panel_key: str | None) -> None:
    """Check that ``obs[key]`` names each cell's source and ``varm[key]`` its genes.

    Parameters
    ----------
    adata
        The AnnData.
    gene_panel_key
        ``obs`` column of each cell's source and ``varm`` key of a genes x sources
        boolean :class:`~pandas.DataFrame` (as :func:`~scexceiver.data.open_h5ad_corpus`
        writes); ``None``: nothing to check.

    Raises
    ------
    ValueError
        If either is missing, the table is not boolean, or a source has no column.
    """
    if gene_panel_key is None:
        return
    check_obs_key(adata.obs, "gene_panel_key", gene_panel_key)
    table = adata.varm[gene_panel_key] if gene_panel_key in adata.varm else None
    if not isinstance(table, pd.DataFrame):
        raise ValueError(
            f"gene_panel_key {gene_panel_key!r} needs adata.varm[{gene_panel_key!r}], a genes "
            "x sources boolean DataFrame of the genes each source measured (open_h5ad_corpus "
            "writes it); pass gene_panel_key=None if every cell measured every gene."
        )
    if not all(pd.api.types.is_bool_dtype(dtype) for dtype in table.dtypes):
        raise ValueError(f"adata.varm[{gene_panel_key!r}] must hold booleans (measured or not).")
    sources = pd.unique(adata.obs[gene_panel_key].astype(str))
    missing = [s for s in sources if s not in table.columns.astype(str)]
    if missing:
        raise ValueError(
            f"obs[{gene_panel_key!r}] has sources without a column in "
            f"varm[{gene_panel_key!r}]: {missing[:5]} (columns: {list(table.columns)[:5]})."
        )


def measured_table(
    adata: AnnData, gene_panel_key: str, categories: list[str] | np.ndarray
) -> np.ndarray:
    """(panels, genes of ``adata``) boolean: the genes each source in ``categories`` measured.

    Rows follow ``categories`` (the registered codes of ``obs[gene_panel_key]``).
    """
    table = adata.varm[gene_panel_key]
    table = table.set_axis(table.columns.astype(str), axis=1)
    return table[[str(c) for c in categories]].to_numpy(dtype=bool).T.copy()


def to_vocabulary(measured: np.ndarray, lookup: np.ndarray | None, n_genes: int) -> np.ndarray:
    """A (panels, data genes) table placed on a vocabulary of ``n_genes`` through ``lookup``.

    Vocabulary genes the data lack are unmeasured in every panel.
    """
    if lookup is None:
        return measured
    out = np.zeros((measured.shape[0], n_genes), dtype=bool)
    known = lookup >= 0
    out[:, lookup[known]] = measured[:, known]
    return out
