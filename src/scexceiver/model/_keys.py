"""Reading gene keys from ``var``."""

from __future__ import annotations

import pandas as pd


def var_gene_keys(var: pd.DataFrame, gene_key: str | None) -> pd.Index:
    """Gene keys of ``var``: its index, or the ``gene_key`` column as strings."""
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
