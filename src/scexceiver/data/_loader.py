"""scvi-tools data loaders that deliver tokenised sparse minibatches."""

from __future__ import annotations

from scvi.dataloaders import AnnDataLoader, DataSplitter

from ._tokenize import collate_tokens


class ExceiverDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` yielding padded gene tokens.

    Counts are read as sparse minibatches and collated by
    :func:`~scexceiver.data.collate_tokens` (in the worker processes when
    ``num_workers > 0``), so no dense cells x genes matrix is ever built.
    All arguments are those of :class:`~scvi.dataloaders.AnnDataLoader`.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["load_sparse_tensor"] = True
        kwargs["collate_fn"] = collate_tokens
        super().__init__(*args, **kwargs)


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
