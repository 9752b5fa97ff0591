"""scvi-tools data loaders that deliver tokenised sparse minibatches."""

from __future__ import annotations

from functools import partial

import numpy as np
from scvi import REGISTRY_KEYS, settings
from scvi.dataloaders import AnnDataLoader, DataSplitter

from ._sampler import use_length_buckets
from ._tokenize import collate_tokens


class ExceiverDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` yielding padded gene tokens.

    Counts are read as sparse minibatches and collated by
    :func:`~scexceiver.data.collate_tokens` (in the worker processes when
    ``num_workers > 0``), so no dense cells x genes matrix is ever built.

    Parameters
    ----------
    adata_manager, *args
        Arguments of :class:`~scvi.dataloaders.AnnDataLoader`.
    gene_lookup
        Vocabulary position of each of the data's genes (-1: not in the vocabulary), when
        the data's gene panel is not the model's; ``None`` when it is.
    n_genes
        Size of the model's vocabulary (needed with ``gene_lookup``).
    length_bucketing
        When shuffling, batch cells with similar numbers of expressed genes together
        (:class:`~scexceiver.data.LengthGroupedSampler`) so less of each batch is padding.
    **kwargs
        Keyword arguments of :class:`~scvi.dataloaders.AnnDataLoader`.
    """

    def __init__(
        self,
        adata_manager,
        *args,
        gene_lookup: np.ndarray | None = None,
        n_genes: int | None = None,
        length_bucketing: bool = False,
        **kwargs,
    ) -> None:
        kwargs["load_sparse_tensor"] = True
        kwargs["collate_fn"] = partial(collate_tokens, gene_lookup=gene_lookup, n_genes=n_genes)
        bucketing = length_bucketing and kwargs.get("shuffle", False)
        if bucketing:
            kwargs["shuffle"] = False
        super().__init__(adata_manager, *args, **kwargs)
        if bucketing:
            counts = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            use_length_buckets(self, counts, seed=settings.seed)


class ExceiverDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` over :class:`ExceiverDataLoader`.

    Unlike the base class it never densifies sparse minibatches on the device, and it
    splits the cells once: later ``setup`` calls (Lightning's, in every process of a
    multi-device run) keep that split, so all ranks shard the same training cells.
    """

    data_loader_cls = ExceiverDataLoader

    def setup(self, stage: str | None = None) -> None:
        """Split the cells into train/validation/test sets (once)."""
        if not hasattr(self, "train_idx"):
            super().setup(stage)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Return the tokenised batch unchanged."""
        return batch
