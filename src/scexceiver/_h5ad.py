"""Reading raw counts from h5ad files for the command line (in memory, or as a corpus on disk)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.io import read_elem
from scipy import sparse

from .data import gene_keys as var_gene_keys
from .data import open_h5ad_corpus

#: ``obs`` column naming the file each cell came from (usable as ``--batch-key``).
SOURCE_FILE_KEY = "source_file"


class InputError(ValueError):
    """A problem with the user's files or arguments, fixable by changing them."""


def check_h5ad_path(path: str | Path) -> Path:
    """``path`` as a :class:`~pathlib.Path`, or an :class:`InputError` if it is no h5ad file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r} does not exist or is not a file.")
    if path.suffix != ".h5ad":
        raise InputError(f"{str(path)!r} is not an .h5ad file.")
    return path


def read_h5ad(path: str | Path) -> AnnData:
    """Read an h5ad file into memory, with a clear error for a missing or unreadable file."""
    path = check_h5ad_path(path)
    try:
        return anndata.read_h5ad(path)
    except OSError as err:
        raise InputError(f"could not read {str(path)!r} as h5ad: {err}") from err


def _check_layer(layers: list[str], layer: str | None, *, name: str) -> None:
    if layer is not None and layer not in layers:
        raise InputError(
            f"{name} has no layer {layer!r} (layers: {layers}); pass --layer "
            "with the layer holding raw counts, or leave it out to use X."
        )


def counts_matrix(adata: AnnData, layer: str | None, *, name: str) -> sparse.csr_matrix:
    """Raw counts of ``adata`` (``X`` or ``layers[layer]``) as CSR float32."""
    _check_layer(list(adata.layers), layer, name=name)
    counts = adata.X if layer is None else adata.layers[layer]
    return sparse.csr_matrix(counts, dtype=np.float32)


def gene_keys(var: pd.DataFrame, gene_key: str | None, *, name: str) -> pd.Index:
    """Unique gene keys of a ``var`` table: its index or its ``gene_key`` column."""
    try:
        keys = var_gene_keys(var, gene_key)
    except ValueError as err:
        raise InputError(
            f"{name}: {err} On the command line, pass --gene-key with a var column of gene "
            "IDs, or leave it out to use var_names."
        ) from err
    keys = pd.Index(keys.astype(str))
    if keys.has_duplicates:
        duplicated = list(keys[keys.duplicated()][:5])
        raise InputError(
            f"gene keys of {name} are not unique ({duplicated}); pass --gene-key with a "
            "unique var column such as Ensembl IDs."
        )
    return keys


def read_counts(
    paths: Sequence[str | Path],
    *,
    layer: str | None = None,
    gene_key: str | None = None,
) -> AnnData:
    """Raw counts of one or more h5ad files as one in-memory AnnData.

    Several files are concatenated on the **intersection** of their gene keys: a gene
    missing from one file was not measured there, so filling it with zeros would teach
    the model that it is not expressed.

    Parameters
    ----------
    paths
        h5ad files with raw counts.
    layer
        Layer holding raw counts in every file; ``None`` uses ``X``.
    gene_key
        ``var`` column with the gene keys in every file; ``None`` uses ``var_names``.

    Returns
    -------
    anndata.AnnData
        Counts in ``X`` (CSR float32), ``var_names`` set to the gene keys (also stored in
        ``var[gene_key]`` when given), the ``obs`` columns every file has, and
        ``obs["source_file"]`` with the file's path as given (cell names get ``-<path>``
        appended when they repeat across files).
    """
    for path in paths:
        check_h5ad_path(path)
    if len(set(map(str, paths))) < len(paths):
        raise InputError("the same file is given more than once.")
    parts = {}
    for path in map(Path, paths):
        adata = read_h5ad(path)
        part = AnnData(
            X=counts_matrix(adata, layer, name=str(path)),
            obs=adata.obs.copy(),
            var=pd.DataFrame(index=gene_keys(adata.var, gene_key, name=str(path))),
        )
        parts[str(path)] = part
    if len(parts) == 1:
        ((path, combined),) = parts.items()
        combined.obs[SOURCE_FILE_KEY] = pd.Categorical([path] * combined.n_obs)
    else:
        repeated = pd.Index(np.concatenate([p.obs_names for p in parts.values()]))
        combined = anndata.concat(
            parts,
            join="inner",
            label=SOURCE_FILE_KEY,
            index_unique="-" if repeated.has_duplicates else None,
        )
        if combined.n_vars == 0:
            raise InputError("the files share no gene keys; check --gene-key.")
    if gene_key is not None:
        combined.var[gene_key] = combined.var_names.to_numpy()
    return combined


def open_counts_on_disk(
    paths: Sequence[str | Path],
    corpus: str | Path,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
) -> AnnData:
    """Raw counts of one or more h5ad files as one backed corpus written at ``corpus``.

    Each file is checked first, reading only its ``var`` and the names of its layers
    (same errors as :func:`read_counts`), then the counts are streamed into ``corpus``
    with :func:`~scexceiver.data.open_h5ad_corpus` (reused if it exists). Genes are the
    **union** of the files' gene keys; ``varm["source_file"]`` records which file
    measured which gene, ``obs["source_file"]`` each cell's file (its name without
    suffix).

    Parameters
    ----------
    paths
        h5ad files with raw counts.
    corpus
        The h5ad file to write (not one of ``paths``).
    layer
        Layer holding raw counts in every file; ``None`` uses ``X``.
    gene_key
        ``var`` column with the gene keys in every file; ``None`` uses ``var_names``.

    Returns
    -------
    anndata.AnnData
        The corpus, opened backed (read-only).
    """
    corpus = Path(corpus)
    if corpus.suffix != ".h5ad":
        raise InputError(f"--on-disk {str(corpus)!r} must end in .h5ad.")
    for path in map(check_h5ad_path, paths):
        if corpus.exists() and corpus.resolve() == path.resolve():
            raise InputError("--on-disk is one of the input files; give a new path.")
        try:
            with h5py.File(path, "r") as f:
                layers = list(f["layers"]) if "layers" in f else []
                var = read_elem(f["var"])
        except OSError as err:
            raise InputError(f"could not read {str(path)!r} as h5ad: {err}") from err
        _check_layer(layers, layer, name=str(path))
        gene_keys(var, gene_key, name=str(path))
    if len({Path(p).stem for p in paths}) < len(paths):
        raise InputError("--on-disk needs input files with distinct names.")
    return open_h5ad_corpus(
        list(paths), corpus, layer=layer, gene_key=gene_key, label=SOURCE_FILE_KEY
    )
