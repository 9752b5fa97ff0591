"""Chunk-shuffled order: every cell once, few contiguous blocks per batch, seeded, sharded."""

import numpy as np
import pytest

from scexceiver.data import ChunkShuffleSampler

N_ROWS, CHUNK, WINDOW, BATCH = 3000, 50, 4, 64


@pytest.fixture(scope="module")
def train_rows():
    """90% of the rows, in random order, as a data splitter's training indices are."""
    return np.random.default_rng(0).permutation(N_ROWS)[: int(0.9 * N_ROWS)]


def _order(rows, **kwargs):
    sampler = ChunkShuffleSampler(
        rows, chunk_size=CHUNK, window_chunks=WINDOW, seed=kwargs.pop("seed", 0), **kwargs
    )
    return sampler, np.array(list(sampler))


def test_every_training_cell_once_per_epoch(train_rows):
    sampler, first = _order(train_rows)
    second = np.array(list(sampler))
    for epoch in (first, second):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(train_rows.size))
    assert len(sampler) == train_rows.size
    assert (first != second).mean() > 0.9  # a fresh order every epoch


def test_batches_come_from_few_contiguous_blocks(train_rows):
    _, order = _order(train_rows)
    blocks = train_rows[order] // CHUNK
    per_batch = [np.unique(blocks[i : i + BATCH]).size for i in range(0, blocks.size, BATCH)]
    # a window holds 4 blocks, a batch straddling two windows 8; random rows touch ~BATCH
    assert max(per_batch) <= 2 * WINDOW
    assert np.mean(per_batch) < 1.5 * WINDOW
    random = np.random.default_rng(0).permutation(train_rows)[:BATCH] // CHUNK
    assert np.unique(random).size > 40
    # cells are shuffled within the window, not read in disk order
    assert (np.diff(train_rows[order][:BATCH]) < 0).mean() > 0.3


def test_same_seed_same_order_and_set_epoch_replays(train_rows):
    sampler, a = _order(train_rows, seed=7)
    _, b = _order(train_rows, seed=7)
    _, c = _order(train_rows, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.9
    second = np.array(list(sampler))
    sampler.set_epoch(1)  # what Lightning does when it resumes at epoch 1
    np.testing.assert_array_equal(np.array(list(sampler)), second)


@pytest.mark.parametrize("n_rows", [N_ROWS, N_ROWS - 1])
def test_ranks_get_distinct_equal_shards(n_rows):
    rows = np.arange(n_rows)
    shards = [_order(rows, num_replicas=2, rank=r)[1] for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == -(-n_rows // 2)
    union = np.concatenate(shards)
    np.testing.assert_array_equal(np.unique(union), rows)
    assert union.size - np.unique(union).size == (n_rows % 2)  # one padding cell if odd
    # each rank reads its own blocks: at most one block is shared at the cut
    blocks = [set(s // CHUNK) for s in shards]
    assert len(blocks[0] & blocks[1]) <= 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkShuffleSampler(np.arange(10), chunk_size=0)
    with pytest.raises(ValueError, match="rank 2"):
        ChunkShuffleSampler(np.arange(10), num_replicas=2, rank=2)
