"""Chunk-shuffled orders of cells: contiguous blocks of rows, shuffled, mixed in windows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from ._ranks import replica_rank


class ChunkShuffleSampler(Sampler[int]):
    """Shuffled order of cells that reads a backed matrix in a few contiguous blocks.

    The rows of the matrix are cut into blocks of ``chunk_size`` consecutive rows. Each
    epoch the order of the blocks is shuffled, the cells of the shuffled blocks are laid
    end to end, and the cells within each window of ``window_chunks`` consecutive blocks
    of that sequence are shuffled. Batching the yielded positions in
    runs of ``batch_size`` (as a :class:`~torch.utils.data.BatchSampler` does) gives
    minibatches whose cells come from about ``window_chunks`` blocks, so a reader that
    keeps the blocks of the current window (:class:`~scexceiver.data.ChunkedReadDataset`)
    reads every block of rows once per epoch, in one contiguous slice, instead of one
    random row at a time. Every cell comes once per epoch.

    Under DDP the shuffled sequence is cut into ``num_replicas`` contiguous shards of
    equal length (padded with its first cells when it does not divide evenly, as
    :class:`~torch.utils.data.DistributedSampler` does), so each rank reads its own
    blocks and trains on its own cells.

    Parameters
    ----------
    rows
        Row of the matrix of each position of the dataset (the loader's ``indices``);
        the sampler yields positions into it.
    chunk_size
        Rows per contiguous block.
    window_chunks
        Blocks whose cells are shuffled together: more mixes batches better, fewer keep
        fewer rows in memory.
    seed
        Seed of the shuffling; epoch ``e`` uses ``seed + e``. ``None`` draws one from
        torch's global generator.
    num_replicas, rank
        Number of DDP processes and this one's rank; ``None`` reads them from
        :mod:`torch.distributed` when it is initialised (otherwise 1 and 0).
    """

    def __init__(
        self,
        rows: np.ndarray,
        *,
        chunk_size: int = 256,
        window_chunks: int = 8,
        seed: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if chunk_size < 1 or window_chunks < 1:
            raise ValueError(
                f"chunk_size ({chunk_size}) and window_chunks ({window_chunks}) must be >= 1."
            )
        num_replicas, rank = replica_rank(num_replicas, rank)
        self.rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        self.chunk_size = chunk_size
        self.window_chunks = window_chunks
        self.seed = int(torch.randint(2**31, ())) if seed is None else seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle the next epoch as epoch ``epoch`` (Lightning calls it every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.rows) // self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        for cells in self._windows(generator):
            yield from cells[torch.randperm(len(cells), generator=generator)].tolist()

    def _windows(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Positions of this rank's epoch, window by window, in block order."""
        by_row = self.rows.argsort(stable=True)
        block = self.rows[by_row] // self.chunk_size
        _, block_sizes = torch.unique_consecutive(block, return_counts=True)
        blocks = by_row.split(block_sizes.tolist())
        order = torch.randperm(len(blocks), generator=generator).tolist()
        sequence = torch.cat([blocks[i] for i in order]) if blocks else by_row
        shard = len(self)
        padded = sequence.repeat(-(-shard * self.num_replicas // max(len(sequence), 1)))
        mine = padded[self.rank * shard : (self.rank + 1) * shard]
        block = self.rows[mine] // self.chunk_size
        starts = torch.ones(len(mine), dtype=torch.bool)
        starts[1:] = block[1:] != block[:-1]
        window = (starts.cumsum(0) - 1) // self.window_chunks
        _, window_sizes = torch.unique_consecutive(window, return_counts=True)
        yield from mine.split(window_sizes.tolist())


class ChunkNeighbourhoodSampler(ChunkShuffleSampler):
    """Chunk-shuffled order of neighbourhoods: each cell with its nearest cells in its window.

    The epoch is read window by window as by :class:`ChunkShuffleSampler`, but instead
    of shuffling a window's cells, its cells are visited in random order and each
    visited cell is followed by ``group_size - 1`` cells drawn at random from its ``k``
    nearest cells within the window (by the cosine of ``scores``). Batching the
    yielded positions in runs of a multiple of ``group_size`` gives minibatches of whole
    neighbourhoods (as :class:`~scexceiver.data.NeighbourhoodSampler` does in memory)
    whose rows all come from the blocks of one window, so a
    :class:`~scexceiver.data.BlockCache` of ``2 x window_chunks`` blocks still reads each
    block once per epoch. A neighbourhood is only as near as the window's cells allow:
    with ``window_chunks x chunk_size`` rows per window, the larger the window, the
    nearer the neighbours. Each window gives as many positions as it has cells (up to
    rounding to whole neighbourhoods), so an epoch yields ``len(self)`` positions; a
    cell may come more than once, or not at all.

    Parameters
    ----------
    rows, chunk_size, window_chunks, seed, num_replicas, rank
        As for :class:`ChunkShuffleSampler`.
    scores
        (positions, components) coordinates of each position's cell (for example its
        principal component scores); cells are compared by their cosine.
    group_size
        Cells per neighbourhood.
    k
        Nearest cells of the window a visited cell's neighbours are drawn from.
    """

    def __init__(
        self,
        rows: np.ndarray,
        scores: np.ndarray,
        *,
        group_size: int = 4,
        k: int = 15,
        **kwargs,
    ) -> None:
        super().__init__(rows, **kwargs)
        scores = torch.as_tensor(np.asarray(scores), dtype=torch.float32)
        if scores.ndim != 2 or len(scores) != len(self.rows) or not 1 <= group_size <= k + 1:
            raise ValueError(
                f"scores must be (positions, components) with one row per position and "
                f"1 <= group_size <= k + 1; got shape {tuple(scores.shape)} for "
                f"{len(self.rows)} positions, group_size {group_size} and k {k}."
            )
        self.unit = torch.nn.functional.normalize(scores, dim=1)
        self.group_size = group_size
        self.k = k

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        seen = visits = 0
        groups = []
        for cells in self._windows(generator):
            # whole neighbourhoods so far: ceil(positions so far / group_size)
            seen += len(cells)
            n_visits = -(-seen // self.group_size) - visits
            visits += n_visits
            groups.append(self._neighbourhoods(cells, n_visits, generator))
        order = torch.cat(groups).flatten() if groups else torch.empty(0, dtype=torch.int64)
        yield from order[: len(self)].tolist()

    def _neighbourhoods(
        self, cells: torch.Tensor, n_visits: int, generator: torch.Generator
    ) -> torch.Tensor:
        """(n_visits, group_size) positions: random cells of ``cells`` and their neighbours."""
        visited = torch.randperm(len(cells), generator=generator)[:n_visits]
        k = min(self.k, len(cells) - 1)
        need = self.group_size - 1
        if k == 0:
            return cells[visited, None].expand(-1, self.group_size)
        unit = self.unit[cells]
        similarity = unit[visited] @ unit.T
        similarity[torch.arange(len(visited)), visited] = -torch.inf
        nearest = similarity.topk(k, dim=1).indices
        if k >= need:
            picks = torch.rand(len(visited), k, generator=generator).argsort(dim=1)[:, :need]
        else:  # a window of fewer cells than a neighbourhood: draw with repeats
            picks = torch.randint(k, (len(visited), need), generator=generator)
        return cells[torch.cat([visited[:, None], nearest.gather(1, picks)], dim=1)]
