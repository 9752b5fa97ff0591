"""One way to write results into a user's AnnData without silently losing anything."""

from __future__ import annotations

from typing import Any, Literal

from anndata import AnnData


def store(
    adata: AnnData,
    attr: Literal["obs", "var", "obsm", "varm", "layers", "uns"],
    key: str,
    value: Any,
    overwrite: bool = False,
) -> None:
    """Write ``value`` to ``adata.<attr>[key]``, refusing to replace an existing key.

    Parameters
    ----------
    adata
        The AnnData to write into.
    attr
        Which mapping of ``adata`` to write.
    key
        The key to write.
    value
        What to write.
    overwrite
        Replace an existing ``key``. Without it an existing key raises.

    Raises
    ------
    KeyError
        ``key`` already exists in ``adata.<attr>`` and ``overwrite`` is False.
    """
    target = getattr(adata, attr)
    if key in target and not overwrite:
        raise KeyError(
            f"adata.{attr}[{key!r}] already exists; pass overwrite=True to replace it "
            "or choose another key."
        )
    target[key] = value
