"""Query mapping: a model of new data that starts from a pretrained reference model."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from scexceiver.data import gene_keys, gene_statistics
from scexceiver.module import batch_level_shifts, batch_standardisation
from scexceiver.module._freeze import GENE_AXES, freeze_reference

if TYPE_CHECKING:
    from anndata import AnnData

    from ._model import ExceiverModel

logger = logging.getLogger(__name__)

#: Module tensors indexed by gene (beyond the parameters), with their gene axis.
_GENE_TENSORS = {
    **GENE_AXES,
    "normalizer.mean": 0,
    "normalizer.std": 0,
    "normalizer.batch_mean": 1,
    "normalizer.batch_std": 1,
    "gene_expressed_mean": 0,
    "query_weights": 0,
}
#: Learned batch rows that a query's new batches train (with a frozen backbone too).
_BATCH_EMBEDDINGS = ("network.batch_embedding.weight", "network.batch_context.batch.weight")
#: Module tensors indexed by batch (rows), tied to the reference's batch categories.
_BATCH_TENSORS = (
    *_BATCH_EMBEDDINGS,
    "network.batch_output_bias",
    "normalizer.batch_mean",
    "normalizer.batch_std",
)


def load_query_data(
    cls: type[ExceiverModel],
    adata: AnnData,
    reference_model: ExceiverModel,
    *,
    freeze_backbone: bool = True,
    min_gene_overlap: float = 0.5,
    **init_kwargs,
) -> ExceiverModel:
    """Build a ``cls`` model of ``adata`` from ``reference_model``.

    Documented at :meth:`scexceiver.ExceiverModel.load_query_data`; ``init_kwargs`` are
    further arguments of ``cls`` (e.g. the predictor's task).
    """
    if not reference_model.module.is_fitted:
        raise ValueError("reference_model is untrained: train it (or load a trained one).")
    reference_setup = reference_model.registry_["setup_args"]
    if _registered_manager(cls, adata) is None:
        cls.setup_anndata(
            adata,
            **{
                key: reference_setup.get(key)
                for key in ("layer", "batch_key", "labels_key", "gene_key")
            },
        )
    manager = cls._get_most_recent_anndata_manager(adata, required=True)
    keys = gene_keys(adata.var, manager.registry["setup_args"].get("gene_key"))
    reference_vocabulary = reference_model.gene_vocabulary_
    _, overlap = reference_vocabulary.align(keys, adata.var, min_gene_overlap)
    logger.info("Query genes against the reference vocabulary: %s.", overlap)
    vocabulary = reference_vocabulary.extend(keys)
    model = cls(
        adata,
        preset=reference_model.preset,
        gene_vocabulary=list(vocabulary.keys),
        **reference_model.init_params_["kwargs"].get("model_kwargs", {}),
        **init_kwargs,
    )
    n_reference = len(reference_vocabulary)
    same_batches = _batch_categories(model) == _batch_categories(reference_model)
    _copy_weights(reference_model.module, model.module, n_reference, same_batches)
    if len(vocabulary) > n_reference:
        _fit_new_genes(model, n_reference)
    if model.module.needs_batch_statistics:
        # without a batch_key, the query is a batch of its own, not the reference's
        known = same_batches and reference_setup.get("batch_key") is not None
        _fit_query_batches(model, n_reference, known)
    if freeze_backbone:
        trainable = () if same_batches else _BATCH_EMBEDDINGS
        model._restore_frozen = freeze_reference(model.module, n_reference, trainable)
    return model


def _registered_manager(cls, adata):
    """The manager ``adata`` was registered with, ``None`` if unregistered or a copy."""
    try:
        return cls._get_most_recent_anndata_manager(adata)
    except ValueError:
        return None


def _batch_categories(model: ExceiverModel) -> list:
    """Batch categories of ``model`` (from its registry: the model may have no data)."""
    state = model.registry_["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]
    return list(state["categorical_mapping"])


@torch.no_grad()
def _copy_weights(reference, module, n_reference: int, same_batches: bool) -> None:
    """Copy every reference tensor into ``module``; gene tensors into the first genes.

    Without ``same_batches``, batch tensors are not copied; new batches' rows of the
    decoder's batch conditioning start at the reference batches' average. Parts that
    exist only with two or more batches are left out of a query with one.
    """
    target = module.state_dict()
    for name, value in reference.state_dict().items():
        if name not in target:
            continue
        if name in _BATCH_TENSORS and not same_batches:
            if name == _BATCH_EMBEDDINGS[1]:
                target[name].copy_(value.mean(0, keepdim=True).expand_as(target[name]))
            continue
        if name in _GENE_TENSORS and target[name].shape != value.shape:
            axis = _GENE_TENSORS[name]
            target[name].narrow(axis, 0, n_reference).copy_(value.narrow(axis, 0, n_reference))
        else:
            target[name].copy_(value)


@torch.no_grad()
def _fit_new_genes(model: ExceiverModel, n_reference: int) -> None:
    """Normalisation statistics, output biases and query weights of the new genes."""
    lookup, _ = model._gene_lookup(model.adata)
    positions = np.arange(model.adata.n_vars) if lookup is None else lookup
    new = np.flatnonzero(positions >= n_reference)
    counts = model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    stats = gene_statistics(counts)
    index = torch.as_tensor(positions[new])
    module = model.module

    def values(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array[new], dtype=torch.float32)

    module.normalizer.mean[index] = values(stats.mean)
    module.normalizer.std[index] = values(stats.std)
    module.gene_expressed_mean[index] = values(stats.expressed_mean)
    if module.network.output_bias is not None:
        module.network.output_bias[:, index] = 1.0
        module.network.output_bias[0, index] = values(stats.expressed_mean)
    p = values(stats.detection_rate)
    module.query_weights[index] = p * (1 - p)
    logger.info("Added %d genes new to the reference, with statistics of the query.", new.size)


@torch.no_grad()
def _fit_query_batches(model: ExceiverModel, n_reference: int, known: bool) -> None:
    """Per-batch statistics of a model that uses them, from the query's cells.

    With ``batch_standardise``, new batches get input statistics of every gene from their
    query cells (shrunk toward the reference's as in training), so a batch the reference
    never saw is standardised by its own levels;
    with ``batch_output_bias``, their output bias starts at their level shifts from the
    model's pooled statistics. Neither needs training. With the reference's ``known``
    batches, only genes new to the reference are filled in.
    """
    if known and model.module.n_genes == n_reference:
        return
    module = model.module
    batch_stats = model._batch_statistics(np.arange(model.adata.n_obs))
    genes = slice(n_reference if known else 0, module.n_genes)
    n = module.n_genes
    pooled = SimpleNamespace(
        mean=module.normalizer.mean[:n],
        std=module.normalizer.std[:n],
        expressed_mean=module.gene_expressed_mean[:n],
    )
    if module.batch_standardise:
        mean, std = batch_standardisation(pooled, batch_stats)
        normalizer = module.normalizer
        normalizer.batch_mean[:, genes] = mean[:, genes]
        normalizer.batch_std[:, genes] = std[:, genes]
    bias = module.network.batch_output_bias
    if bias is not None:
        shifts = batch_level_shifts(pooled, batch_stats)
        rows = torch.arange(len(bias)).clamp(max=len(shifts) - 1)
        bias[..., genes] = shifts[rows][..., genes]
    logger.info("Per-batch statistics of %d query batches.", len(batch_stats))
