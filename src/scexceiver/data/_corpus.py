"""Several h5ad files as one on-disk training corpus, with each file's gene panel."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
from anndata.io import read_elem, sparse_dataset
from scipy import sparse

from ._validate import gene_keys


def open_h5ad_corpus(
    sources: str | os.PathLike | Sequence[str | os.PathLike],
    path: str | os.PathLike,
    *,
    layer: str | None = None,
    gene_key: str | None = None,
    label: str = "source",
    overwrite: bool = False,
    chunk_size: int = 8192,
) -> anndata.AnnData:
    """Write h5ad files as one corpus on disk (a second copy) and open it backed.

    The raw counts of every file (``X`` or ``layers[layer]``) are streamed, ``chunk_size``
    rows at a time, into one CSR matrix in a new h5ad at ``path``; no file is ever loaded
    whole. Genes are matched by key and joined: the corpus's genes are the union of the
    files' (first file's order, then each new gene as it appears). A gene missing from
    one file's panel was not measured there: ``varm[label]`` records, per gene, which
    files measured it, and :meth:`~scexceiver.ExceiverModel.setup_anndata` with
    ``gene_panel_key=label`` makes training treat it as unmeasured, not as zero (it is
    never a decoding target of those cells and its statistics come from the cells that
    measured it).

    Why a copy: scvi-tools' :class:`~scvi.data.AnnDataManager` registers one
    :class:`~anndata.AnnData` (it checks ``is_view``, writes ``uns`` and ``obs`` columns
    and reads the counts as one matrix). :class:`anndata.experimental.AnnCollection`
    has no ``is_view`` nor ``uns`` and is refused, and anndata's lazy concatenation
    (:func:`anndata.experimental.read_lazy` with :func:`anndata.concat`) needs dask and
    gives a read-only ``obs``. A single file needs no copy: open it with
    ``anndata.read_h5ad(path, backed="r")``.

    Parameters
    ----------
    sources
        A directory (all its ``*.h5ad`` files, in name order) or a list of h5ad paths.
    path
        Where to write the corpus (never taken as a source). An existing file is reused
        as is unless ``overwrite``.
    layer
        Layer with raw counts in every file; ``None`` uses ``X``. The corpus holds them
        in ``X``.
    gene_key
        ``var`` column with the gene keys of every file; ``None`` uses ``var_names``. The
        corpus's ``var_names`` are the keys (also stored in ``var[gene_key]``).
    label
        ``obs`` column with each cell's source file (its name without suffix), and the
        ``varm`` key of the genes x files table of measured genes. Cell names get
        ``-<file name>`` appended.
    overwrite
        Rewrite ``path`` even if it exists.
    chunk_size
        Rows read and written at a time.

    Returns
    -------
    anndata.AnnData
        The corpus, opened with ``backed="r"``; ``obs`` holds the columns every file has.

    Examples
    --------
    >>> corpus = open_h5ad_corpus("atlas_parts/", "atlas.h5ad")
    >>> ExceiverModel.setup_anndata(corpus, gene_panel_key="source")
    """
    path = Path(path)
    paths = [p for p in _source_paths(sources) if p.resolve() != path.resolve()]
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_corpus(paths, path, layer, gene_key, label, chunk_size)
    return anndata.read_h5ad(path, backed="r")


def _write_corpus(
    paths: list[Path],
    path: Path,
    layer: str | None,
    gene_key: str | None,
    label: str,
    chunk_size: int,
) -> None:
    obs, keys = [], []
    for p in paths:
        with h5py.File(p, "r") as f:
            obs.append(read_elem(f["obs"]))
            keys.append(_panel_keys(read_elem(f["var"]), gene_key, p))
            _counts(f, layer, p)
    genes = pd.Index(pd.unique(np.concatenate([k.to_numpy() for k in keys])))
    measured = pd.DataFrame(
        {p.stem: genes.isin(k) for p, k in zip(paths, keys, strict=True)}, index=genes
    )
    shared = [c for c in obs[0].columns if c != label and all(c in o.columns for o in obs)]
    cells = pd.concat(
        [
            o[shared].set_axis(o.index.astype(str) + f"-{p.stem}")
            for p, o in zip(paths, obs, strict=True)
        ]
    )
    cells[label] = pd.Categorical(
        np.repeat([p.stem for p in paths], [len(o) for o in obs]),
        categories=[p.stem for p in paths],
    )
    var = pd.DataFrame(index=genes)
    if gene_key is not None:
        var[gene_key] = genes.to_numpy()
    skeleton = anndata.AnnData(obs=cells, var=var, varm={label: measured})
    skeleton.write_h5ad(path)
    with h5py.File(path, "r+") as out:
        _append_counts(out, paths, keys, genes, layer, len(cells), chunk_size)


def _append_counts(
    out: h5py.File,
    paths: list[Path],
    keys: list[pd.Index],
    genes: pd.Index,
    layer: str | None,
    n_cells: int,
    chunk_size: int,
) -> None:
    """Stream every file's counts, columns mapped onto ``genes``, into ``out["X"]`` (CSR)."""
    index_dtype = np.int32 if len(genes) < 2**31 else np.int64
    group = out.create_group("X")
    group.attrs.update(
        {"encoding-type": "csr_matrix", "encoding-version": "0.1.0"},
        shape=(n_cells, len(genes)),
    )
    data = group.create_dataset("data", (0,), np.float32, maxshape=(None,), chunks=(2**16,))
    indices = group.create_dataset("indices", (0,), index_dtype, maxshape=(None,), chunks=(2**16,))
    indptr = group.create_dataset("indptr", (n_cells + 1,), np.int64)
    indptr[0] = 0
    row = nnz = 0
    for p, panel in zip(paths, keys, strict=True):
        columns = genes.get_indexer(panel)
        with h5py.File(p, "r") as f:
            counts = _counts(f, layer, p)
            for start in range(0, counts.shape[0], chunk_size):
                chunk = sparse.csr_matrix(counts[start : start + chunk_size], dtype=np.float32)
                chunk.eliminate_zeros()
                chunk = sparse.csr_matrix(
                    (chunk.data, columns[chunk.indices], chunk.indptr),
                    shape=(chunk.shape[0], len(genes)),
                )
                chunk.sort_indices()
                data.resize((nnz + chunk.nnz,))
                indices.resize((nnz + chunk.nnz,))
                data[nnz:] = chunk.data
                indices[nnz:] = chunk.indices
                indptr[row + 1 : row + 1 + chunk.shape[0]] = nnz + chunk.indptr[1:]
                row, nnz = row + chunk.shape[0], nnz + chunk.nnz


def _counts(f: h5py.File, layer: str | None, p: Path):
    """The backed counts of an open h5ad file (``X`` or a layer), never loaded."""
    name = "X" if layer is None else f"layers/{layer}"
    if name not in f:
        layers = list(f["layers"]) if "layers" in f else []
        raise ValueError(
            f"{p} has no layer {layer!r} (layers: {layers}); pass the layer holding raw "
            "counts in every file, or layer=None to use X."
        )
    element = f[name]
    return element if isinstance(element, h5py.Dataset) else sparse_dataset(element)


def _panel_keys(var: pd.DataFrame, gene_key: str | None, p: Path) -> pd.Index:
    try:
        keys = pd.Index(gene_keys(var, gene_key).astype(str))
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from err
    if keys.has_duplicates:
        raise ValueError(
            f"Gene keys of {p} are not unique ({list(keys[keys.duplicated()][:5])}); pass "
            "gene_key= a unique var column such as Ensembl IDs."
        )
    return keys


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
