"""Several h5ad files as one on-disk training corpus."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata
from anndata.experimental import concat_on_disk


def open_h5ad_corpus(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    path: str | os.PathLike,
    *,
    label: str = "source",
    overwrite: bool = False,
    max_loaded_elems: int = 20_000_000,
) -> anndata.AnnData:
    """Concatenate h5ad files on disk into one corpus and open it backed (read-only).

    The files are concatenated cell-wise with :func:`anndata.experimental.concat_on_disk`
    (never loading a whole file), taking the union of their genes: a gene missing from
    one file's panel reads as undetected in that file's cells, and the model's gene
    vocabulary is the union. Register the result with
    :meth:`~scexceiver.ExceiverModel.setup_anndata` as usual; training reads minibatches
    of rows from disk and the gene statistics are computed in one streaming pass, so
    memory does not grow with the number of cells.

    Parameters
    ----------
    sources
        A directory (all its ``*.h5ad`` files, in name order) or a list of h5ad paths.
        Genes are matched by ``var_names``: give every file the same kind of gene
        identifiers.
    path
        Where to write the concatenated h5ad (never taken as a source). An existing
        file is reused as is unless ``overwrite``.
    label
        ``obs`` column recording each cell's source file (its name without suffix).
    overwrite
        Rewrite ``path`` even if it exists.
    max_loaded_elems
        Most non-zero values held in memory while concatenating.

    Returns
    -------
    anndata.AnnData
        The corpus, opened with ``backed="r"``.
    """
    path = Path(path)
    paths = [p for p in _source_paths(sources) if p.resolve() != path.resolve()]
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        concat_on_disk(
            {p.stem: p for p in paths},
            path,
            join="outer",
            label=label,
            index_unique="-",
            max_loaded_elems=max_loaded_elems,
        )
    return anndata.read_h5ad(path, backed="r")


def _source_paths(sources) -> list[Path]:
    if isinstance(sources, (str, os.PathLike)):
        directory = Path(sources)
        if not directory.is_dir():
            raise FileNotFoundError(
                f"{directory} is not a directory; pass a directory of .h5ad files or a list "
                "of .h5ad paths."
            )
        paths = sorted(directory.glob("*.h5ad"))
        if not paths:
            raise FileNotFoundError(f"No .h5ad files in {directory}.")
    else:
        paths = [Path(p) for p in sources]
        if not paths:
            raise ValueError("open_h5ad_corpus needs at least one .h5ad file.")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"h5ad files not found: {missing}.")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"Source files need distinct names, got {stems}.")
    return paths
