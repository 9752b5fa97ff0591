"""Embedding an h5ad file with a saved model whose gene panel may differ from the file's."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._h5ad import InputError, counts_matrix, gene_keys
from .model import ExceiverModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedding:
    """Cell and gene embeddings of one AnnData, with how its genes met the model's.

    Attributes
    ----------
    cells
        (cells, features) latents.
    genes
        (genes, dim) gene embeddings aligned with the data's ``var``; NaN rows for
        genes the model does not know.
    n_shared_genes
        Genes of the data found in the model's vocabulary.
    shared_count_fraction
        Fraction of the data's counts that fall on shared genes.
    """

    cells: np.ndarray
    genes: np.ndarray
    n_shared_genes: int
    shared_count_fraction: float


def model_setup(model_dir: str | Path) -> dict:
    """Setup arguments and gene panel a saved model was trained with."""
    if not Path(model_dir).is_dir():
        raise InputError(f"{str(model_dir)!r} is not a folder holding a saved model.")
    try:
        registry = ExceiverModel.load_registry(str(model_dir))
    except (OSError, ValueError, KeyError) as err:
        raise InputError(
            f"{str(model_dir)!r} does not hold a model saved by ExceiverModel.save: {err}"
        ) from err
    if registry.get("setup_method_name", "setup_anndata") != "setup_anndata":
        raise InputError("only models set up with setup_anndata can embed h5ad files.")
    fields = registry["field_registries"]
    categories = {
        registry["setup_args"][arg]: list(fields[field]["state_registry"]["categorical_mapping"])
        for arg, field in (("batch_key", "batch"), ("labels_key", "labels"))
        if registry["setup_args"].get(arg) is not None
    }
    return {
        "setup_args": registry["setup_args"],
        "var_names": list(fields["X"]["state_registry"]["column_names"]),
        "categories": categories,
    }


def embed(
    model_dir: str | Path,
    adata: AnnData,
    *,
    layer: str | None,
    gene_key: str | None,
    min_shared_counts: float = 0.5,
    batch_size: int | None = None,
) -> Embedding:
    """Cell and gene embeddings of ``adata`` from the model saved in ``model_dir``.

    Genes are matched by key. Genes the model does not know are left out (like genes a
    cell does not express); model genes absent from ``adata`` count as not expressed.

    Parameters
    ----------
    model_dir
        Folder written by :meth:`ExceiverModel.save`.
    adata
        Cells with raw counts; not modified.
    layer
        Layer of ``adata`` with raw counts; ``None`` uses ``X``.
    gene_key
        ``var`` column of ``adata`` with the model's gene keys; ``None`` uses ``var_names``.
    min_shared_counts
        Refuse data whose counts fall on the model's genes for less than this fraction.
    batch_size
        Minibatch size of inference.

    Returns
    -------
    Embedding
        The embeddings and the gene overlap.
    """
    setup = model_setup(model_dir)
    setup_args, model_var_names = setup["setup_args"], setup["var_names"]
    counts = counts_matrix(adata, layer, name="the data")
    keys = gene_keys(adata, gene_key, name="the data")
    obs = pd.DataFrame(index=adata.obs_names.astype(str))
    for column, known in setup["categories"].items():
        if column not in adata.obs.columns:
            raise InputError(
                f"the model was trained with obs column {column!r}, which the data lacks; "
                f"add it with one of the model's categories {known[:10]} per cell."
            )
        unknown = set(adata.obs[column].astype(str)) - set(map(str, known))
        if unknown:
            raise InputError(
                f"obs[{column!r}] has categories the model was not trained on "
                f"({sorted(unknown)[:5]}); known ones: {known[:10]}."
            )
        obs[column] = adata.obs[column].astype(str).to_numpy()

    # The model is loaded on one empty cell of its own genes (its vocabulary comes back
    # with it); the data's counts are then placed on those genes by key.
    host = AnnData(
        X=np.zeros((1, len(model_var_names)), dtype=np.float32),
        obs=obs.iloc[:1],
        var=pd.DataFrame(index=pd.Index(model_var_names, dtype=str)),
    )
    if setup_args.get("gene_key") is not None:
        host.var[setup_args["gene_key"]] = model_var_names
    model_layer = setup_args.get("layer")
    if model_layer is not None:
        host.layers[model_layer] = host.X
    model = ExceiverModel.load(str(model_dir), adata=host)

    positions = model.gene_vocabulary_.positions(keys)
    shared = positions >= 0
    total = float(counts.sum())
    shared_fraction = float(counts[:, shared].sum()) / total if total > 0 else 0.0
    logger.info(
        "%d of the data's %d genes are in the model's vocabulary of %d; they hold %.1f%% "
        "of the counts.",
        shared.sum(),
        len(keys),
        len(model.gene_vocabulary_),
        100 * shared_fraction,
    )
    if shared_fraction < min_shared_counts:
        raise InputError(
            f"only {shared.sum()} of the data's genes ({100 * shared_fraction:.1f}% of its "
            f"counts) are in the model's vocabulary, below {100 * min_shared_counts:.0f}%. "
            "Check --gene-key: the model's keys look like "
            f"{list(model.gene_vocabulary_.keys[:3])}, the data's like {list(keys[:3])}."
        )
    placement = sparse.csr_matrix(
        (np.ones(shared.sum(), dtype=np.float32), (np.flatnonzero(shared), positions[shared])),
        shape=(len(keys), len(model.gene_vocabulary_)),
    )
    aligned = AnnData(X=(counts @ placement).tocsr(), obs=obs, var=host.var)
    if model_layer is not None:
        aligned.layers[model_layer] = aligned.X
    table = model.get_gene_embeddings()
    genes = np.full((len(keys), table.shape[1]), np.nan, dtype=np.float32)
    genes[shared] = table[positions[shared]]
    return Embedding(
        cells=model.get_latent_representation(aligned, batch_size=batch_size),
        genes=genes,
        n_shared_genes=int(shared.sum()),
        shared_count_fraction=shared_fraction,
    )
