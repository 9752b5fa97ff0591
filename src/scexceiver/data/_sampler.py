"""Length-bucketed batching: cells with similar numbers of expressed genes share a batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from scipy import sparse
from torch.utils.data import BatchSampler, Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffled order of cells in which every run of ``batch_size`` has similar lengths.

    A minibatch of tokens is padded to its longest cell, so mixing a 300-gene cell with a
    3,000-gene one wastes most of the first row. Each epoch, this sampler permutes the
    cells at random, cuts the permutation into buckets of ``bucket_batches x batch_size``
    cells, sorts each bucket by length, cuts it into batches and shuffles the order of
    the batches. Batching the yielded indices in runs of ``batch_size`` (as a
    :class:`~torch.utils.data.BatchSampler` does) gives exactly those batches: every
    cell once per epoch, batches of similar lengths, a fresh composition and order every
    epoch. The last, possibly partial, batch comes last.

    Parameters
    ----------
    lengths
        Length (number of expressed genes) of each cell, in dataset order.
    batch_size
        Size of the batches the indices will be grouped into.
    bucket_batches
        Batches per bucket: larger buckets pad less, smaller ones keep batches more
        random.
    seed
        Seed of the shuffling; epoch ``e`` uses ``seed + e``. ``None`` draws one from
        torch's global generator.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        bucket_batches: int = 16,
        seed: int | None = None,
    ) -> None:
        if batch_size < 1 or bucket_batches < 1:
            raise ValueError(
                f"batch_size ({batch_size}) and bucket_batches ({bucket_batches}) must be >= 1."
            )
        self.lengths = torch.as_tensor(np.asarray(lengths), dtype=torch.int64)
        self.batch_size = batch_size
        self.bucket_batches = bucket_batches
        self.seed = int(torch.randint(2**31, ())) if seed is None else seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = bucketed_order(self.lengths, self.batch_size, self.bucket_batches, generator)
        yield from order.tolist()


def bucketed_order(
    lengths: torch.Tensor, per_batch: int, bucket_batches: int, generator: torch.Generator
) -> torch.Tensor:
    """A shuffled order of items in which every run of ``per_batch`` has similar lengths.

    The items are permuted at random, cut into buckets of ``bucket_batches x per_batch``,
    each bucket is sorted by length (stably, so equal lengths stay in random order) and
    cut into runs of ``per_batch``, and the full runs are shuffled; the last, possibly
    partial, run comes last. Returns the positions of the items in that order.
    """
    perm = torch.randperm(len(lengths), generator=generator)
    buckets = perm.split(per_batch * bucket_batches)
    ordered = [chunk[lengths[chunk].argsort(stable=True)] for chunk in buckets]
    if not ordered:
        return perm
    runs = torch.cat(ordered).split(per_batch)
    n_full = len(lengths) // per_batch
    shuffled = torch.randperm(n_full, generator=generator).tolist()
    return torch.cat([runs[i] for i in shuffled] + list(runs[n_full:]))


def expressed_genes_per_cell(x, indices: np.ndarray, *, chunk_size: int = 8192) -> np.ndarray:
    """Number of stored non-zeros in rows ``indices`` of ``x`` (sparse, dense or backed).

    Read from the row pointers of a CSR matrix, otherwise ``chunk_size`` rows at a time
    (sorted, as on-disk datasets need). Explicit zeros of a CSR matrix are counted: the
    lengths only group cells, the tokens themselves never include zeros.
    """
    indices = np.asarray(indices)
    if sparse.issparse(x) and x.format == "csr":
        return np.diff(x.indptr)[indices]
    out = np.empty(indices.size, dtype=np.int64)
    for start in range(0, indices.size, chunk_size):
        chunk = indices[start : start + chunk_size]
        order = np.argsort(chunk)
        rows = sparse.csr_matrix(x[chunk[order]])
        rows.eliminate_zeros()
        out[start + order] = np.diff(rows.indptr)
    return out


def use_length_buckets(loader, x, *, seed: int | None) -> None:
    """Make a shuffling :class:`~scvi.dataloaders.AnnDataLoader` batch cells by length.

    ``loader`` must have been built with ``shuffle=False`` and its default sampler (a
    :class:`~torch.utils.data.BatchSampler` over the dataset); the indices it batches are
    replaced by a :class:`LengthGroupedSampler` over the lengths of its cells in ``x``.
    """
    if not isinstance(loader.sampler, BatchSampler):
        raise ValueError(
            "length_bucketing needs the loader's default sampler; it cannot be combined "
            "with sampler= or distributed_sampler=True."
        )
    lengths = expressed_genes_per_cell(x, loader.indices)
    batch_sampler = loader.sampler
    batch_sampler.sampler = LengthGroupedSampler(lengths, batch_sampler.batch_size, seed=seed)
