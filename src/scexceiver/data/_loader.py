"""scvi-tools data loaders that deliver tokenised sparse minibatches."""

from __future__ import annotations

from functools import partial

import numpy as np
from scvi import REGISTRY_KEYS, settings
from scvi.dataloaders import AnnDataLoader, DataSplitter

from ._blocks import BlockCache, ChunkedReadDataset
from ._chunks import ChunkNeighbourhoodSampler, ChunkShuffleSampler
from ._neighbourhoods import use_neighbourhoods
from ._sampler import expressed_genes_per_cell, use_length_buckets
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
    measured_genes
        (gene panels, vocabulary) boolean table of the genes each registered gene panel
        measured; minibatches then carry each cell's row (see
        :func:`~scexceiver.data.collate_tokens`). ``None``: every gene measured.
    length_bucketing
        When shuffling, batch cells with similar numbers of expressed genes together
        (:class:`~scexceiver.data.LengthGroupedSampler`) so less of each batch is padding.
    chunked
        When shuffling, read the counts in contiguous blocks of rows: cells are shuffled
        by :class:`~scexceiver.data.ChunkShuffleSampler` (under DDP it also gives each
        rank its shard) and read through a :class:`~scexceiver.data.BlockCache` of
        ``2 x window_chunks`` blocks. Made for backed (on-disk) data, where it replaces
        one random read per cell by one contiguous read per block. Loaders that do not
        shuffle read rows as scvi-tools does.
    chunk_size, window_chunks
        Rows per block and blocks shuffled together (see
        :class:`~scexceiver.data.ChunkShuffleSampler`).
    neighbourhoods
        When shuffling in memory (not ``chunked``), (cells, k) positions into
        ``indices`` of each cell's nearest cells: minibatches are then made of
        neighbourhoods of ``neighbourhood_size`` cells
        (:class:`~scexceiver.data.NeighbourhoodSampler`; under DDP each rank visits its
        own cells; with ``length_bucketing``, batched by length). ``None``: plain
        shuffling.
    neighbourhood_scores
        When shuffling ``chunked``, (cells, components) coordinates of the cells of
        ``indices``: minibatches are then made of neighbourhoods of each cell's nearest
        cells within its window of blocks, by cosine
        (:class:`~scexceiver.data.ChunkNeighbourhoodSampler`). ``None``: chunk shuffling.
    neighbourhood_size
        Cells per neighbourhood.
    **kwargs
        Keyword arguments of :class:`~scvi.dataloaders.AnnDataLoader`.
    """

    def __init__(
        self,
        adata_manager,
        *args,
        gene_lookup: np.ndarray | None = None,
        n_genes: int | None = None,
        measured_genes: np.ndarray | None = None,
        length_bucketing: bool = False,
        chunked: bool = False,
        chunk_size: int = 256,
        window_chunks: int = 8,
        neighbourhoods: np.ndarray | None = None,
        neighbourhood_scores: np.ndarray | None = None,
        neighbourhood_size: int = 4,
        **kwargs,
    ) -> None:
        kwargs["load_sparse_tensor"] = True
        kwargs["collate_fn"] = partial(
            collate_tokens, gene_lookup=gene_lookup, n_genes=n_genes, measured_genes=measured_genes
        )
        shuffle = kwargs.get("shuffle", False)
        if chunked and length_bucketing and shuffle:
            raise ValueError(
                "length_bucketing cannot be combined with chunked reading (chunked=True, "
                "the default for backed data); pass chunked=False or length_bucketing=False."
            )
        bucketing = length_bucketing and shuffle
        chunked = chunked and shuffle
        if chunked and neighbourhoods is not None:
            raise ValueError(
                "with chunked reading, neighbourhoods are found within windows of blocks: "
                "pass neighbourhood_scores instead of neighbourhoods."
            )
        if shuffle and not chunked and neighbourhood_scores is not None:
            raise ValueError(
                "neighbourhood_scores finds neighbourhoods within the windows of chunked "
                "reading; without chunked=True pass neighbourhoods (each cell's nearest "
                "cells) instead."
            )
        grouped = neighbourhoods is not None and shuffle
        if bucketing or grouped:
            kwargs["shuffle"] = False
        if grouped:
            # the neighbourhood sampler shards ranks itself
            kwargs["distributed_sampler"] = False
        if chunked:
            # the counts come from the blocks; the chunk sampler shards ranks itself
            kwargs["data_and_attributes"] = [
                key for key in adata_manager.data_registry if key != REGISTRY_KEYS.X_KEY
            ]
            kwargs["distributed_sampler"] = False
        super().__init__(adata_manager, *args, **kwargs)
        counts = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        if grouped:
            lengths = expressed_genes_per_cell(counts, self.indices) if bucketing else None
            use_neighbourhoods(
                self, neighbourhoods, neighbourhood_size, seed=settings.seed, lengths=lengths
            )
        elif bucketing:
            use_length_buckets(self, counts, seed=settings.seed)
        if chunked:
            self.dataset.dataset = ChunkedReadDataset(
                self.dataset.dataset,
                BlockCache(counts, chunk_size=chunk_size, max_chunks=2 * window_chunks),
            )
            chunking = {"chunk_size": chunk_size, "window_chunks": window_chunks}
            if neighbourhood_scores is None:
                sampler = ChunkShuffleSampler(self.indices, **chunking, seed=settings.seed)
            else:
                sampler = ChunkNeighbourhoodSampler(
                    self.indices,
                    neighbourhood_scores,
                    group_size=neighbourhood_size,
                    **chunking,
                    seed=settings.seed,
                )
            self.sampler.sampler = sampler
            # Lightning sets the epoch on the loader's sampler, the batch sampler here
            self.sampler.set_epoch = sampler.set_epoch


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
