"""scvi-tools data loaders that deliver tokenised sparse minibatches."""

from __future__ import annotations

from functools import partial

import numpy as np
from scvi.dataloaders import AnnDataLoader, DataSplitter

from ._tokenize import collate_tokens


class ExceiverDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` yielding padded gene tokens.

    Counts are read as sparse minibatches and collated by
    :func:`~scexceiver.data.collate_tokens` (in the worker processes when
    ``num_workers > 0``), so no dense cells x genes matrix is ever built.

    Parameters
    ----------
    *args
        Arguments of :class:`~scvi.dataloaders.AnnDataLoader`.
    gene_lookup
        Vocabulary position of each of the data's genes (-1: not in the vocabulary), when
        the data's gene panel is not the model's; ``None`` when it is.
    n_genes
        Size of the model's vocabulary (needed with ``gene_lookup``).
    **kwargs
        Keyword arguments of :class:`~scvi.dataloaders.AnnDataLoader`.
    """

    def __init__(
        self,
        *args,
        gene_lookup: np.ndarray | None = None,
        n_genes: int | None = None,
        **kwargs,
    ) -> None:
        kwargs["load_sparse_tensor"] = True
        kwargs["collate_fn"] = partial(collate_tokens, gene_lookup=gene_lookup, n_genes=n_genes)
        super().__init__(*args, **kwargs)


class ExceiverDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` over :class:`ExceiverDataLoader`.

    Unlike the base class it never densifies sparse minibatches on the device.
    """

    data_loader_cls = ExceiverDataLoader

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Return the tokenised batch unchanged."""
        return batch
