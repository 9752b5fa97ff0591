"""Embedding an h5ad file with a saved model whose gene panel may differ from the file's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ._h5ad import InputError, counts_matrix, gene_keys
from .data import GeneOverlap
from .model import ExceiverModel


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
    overlap
        How the data's genes matched the model's vocabulary.
    """

    cells: np.ndarray
    genes: np.ndarray
    overlap: GeneOverlap


def load_model(model_dir: str | Path) -> ExceiverModel:
    """The model saved in ``model_dir``, or an :class:`InputError` saying what is wrong."""
    if not Path(model_dir).is_dir():
        raise InputError(f"{str(model_dir)!r} is not a folder holding a saved model.")
    try:
        model = ExceiverModel.load(model_dir)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(
            f"{str(model_dir)!r} does not hold a model saved by ExceiverModel.save: {err}"
        ) from err
    if model.registry_.get("setup_method_name", "setup_anndata") != "setup_anndata":
        raise InputError("only models set up with setup_anndata can embed h5ad files.")
    return model


def embed(
    model: ExceiverModel,
    adata: AnnData,
    *,
    layer: str | None,
    gene_key: str | None,
    batch_size: int | None = None,
) -> Embedding:
    """Cell and gene embeddings of ``adata`` from a trained ``model``.

    The data's counts are presented to the model under its own setup (layer name, gene
    key column, batch and label columns), so ``layer`` and ``gene_key`` may differ from
    the ones the model was trained with. Genes are matched by key through the model's
    vocabulary (:meth:`~scexceiver.ExceiverModel.align_genes`).

    Parameters
    ----------
    model
        A trained model.
    adata
        Cells with raw counts; not modified.
    layer
        Layer of ``adata`` with raw counts; ``None`` uses ``X``.
    gene_key
        ``var`` column of ``adata`` with the model's gene keys; ``None`` uses ``var_names``.
    batch_size
        Minibatch size of inference.

    Returns
    -------
    Embedding
        The embeddings and the gene overlap.
    """
    setup_args = model.registry_["setup_args"]
    keys = gene_keys(adata.var, gene_key, name="the data")
    var = pd.DataFrame(index=keys)
    if setup_args.get("gene_key") is not None:
        var[setup_args["gene_key"]] = keys
    obs = pd.DataFrame(index=adata.obs_names.astype(str))
    for arg in ("batch_key", "labels_key"):
        column = setup_args.get(arg)
        if column is None:
            continue
        if column not in adata.obs.columns:
            raise InputError(
                f"the model was trained with obs column {column!r} ({arg}), which the data "
                "lacks; add it, with one of the model's categories per cell."
            )
        field = "batch" if arg == "batch_key" else "labels"
        known = model.registry_["field_registries"][field]["state_registry"]
        known = [str(c) for c in known["categorical_mapping"]]
        unknown = set(adata.obs[column].astype(str)) - set(known)
        if unknown:
            raise InputError(
                f"obs[{column!r}] has categories the model was not trained on "
                f"({sorted(unknown)[:5]}); known ones: {known[:10]}."
            )
        obs[column] = adata.obs[column].astype(str).to_numpy()
    counts = counts_matrix(adata, layer, name="the data")
    data = AnnData(X=counts, obs=obs, var=var)
    if setup_args.get("layer") is not None:
        data.layers[setup_args["layer"]] = counts
    try:
        overlap = model.align_genes(data)
        cells = model.get_latent_representation(data, batch_size=batch_size)
    except ValueError as err:
        raise InputError(
            f"{err} On the command line, pass --gene-key with the data's var column that "
            "holds the model's kind of gene keys."
        ) from err
    return Embedding(cells=cells, genes=model.get_gene_embeddings(data), overlap=overlap)
