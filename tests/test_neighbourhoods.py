"""Minibatches of input neighbourhoods, for ``neighbour_preservation``."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from scexceiver import ExceiverModel
from scexceiver.data import (
    ChunkNeighbourhoodSampler,
    ExceiverDataLoader,
    NeighbourhoodSampler,
    nearest_cells,
)


def _ring_neighbours(n: int, k: int) -> np.ndarray:
    """Cell i's neighbours are the next k cells around a ring."""
    return (np.arange(n)[:, None] + np.arange(1, k + 1)) % n


def test_the_sampler_yields_each_visited_cell_with_distinct_neighbours():
    neighbours = _ring_neighbours(40, 6)
    sampler = NeighbourhoodSampler(neighbours, group_size=4, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == 40
    groups = np.asarray(order).reshape(10, 4)
    # the 10 visited cells are distinct; each is followed by 3 distinct cells of its row
    assert len(set(groups[:, 0])) == 10
    for visited, *rest in groups:
        assert set(rest) <= set(neighbours[visited]) and len(set(rest)) == 3
    # a fresh draw every epoch, the same one again for the same epoch
    second = list(sampler)
    assert second != order
    sampler.set_epoch(0)
    assert list(sampler) == order


def test_ddp_ranks_visit_their_own_cells_in_whole_neighbourhoods():
    neighbours = _ring_neighbours(103, 6)
    single = NeighbourhoodSampler(neighbours, group_size=4, seed=3)
    shards = [
        list(NeighbourhoodSampler(neighbours, group_size=4, seed=3, num_replicas=3, rank=r))
        for r in range(3)
    ]
    # ceil(103 / 3) = 35 positions per rank: 8 whole neighbourhoods and a cut one
    assert [len(s) for s in shards] == [35, 35, 35]
    visits = [cell for shard in shards for cell in shard[::4]]
    assert len(visits) == len(set(visits)) == 27
    for shard in shards:
        for visited, *rest in np.asarray(shard[:32]).reshape(8, 4):
            assert set(rest) <= set(neighbours[visited]) and len(set(rest)) == 3
    # one rank of one is the single-process sampler
    assert list(single) == list(
        NeighbourhoodSampler(neighbours, group_size=4, seed=3, num_replicas=1, rank=0)
    )
    # more visits than cells wrap around the order
    tiny = [
        list(NeighbourhoodSampler(_ring_neighbours(6, 3), 4, seed=0, num_replicas=4, rank=r))
        for r in range(4)
    ]
    assert [len(s) for s in tiny] == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="rank 2"):
        NeighbourhoodSampler(neighbours, group_size=4, num_replicas=2, rank=2)


def test_the_sampler_cuts_the_last_neighbourhood_and_refuses_a_bad_group_size():
    sampler = NeighbourhoodSampler(_ring_neighbours(10, 3), group_size=4, seed=1)
    assert len(list(sampler)) == 10
    with pytest.raises(ValueError, match="group_size"):
        NeighbourhoodSampler(_ring_neighbours(10, 3), group_size=5)
    with pytest.raises(ValueError, match="group_size"):
        NeighbourhoodSampler(np.arange(10), group_size=2)


def test_nearest_cells_match_exact_principal_component_neighbours():
    rng = np.random.default_rng(0)
    groups = np.arange(300) % 6
    x = (3 * rng.standard_normal((6, 200)))[groups] + rng.standard_normal((300, 200))
    x = (x + 5).astype(np.float32)  # not centred: the function must centre it

    def chunks():
        return iter(np.array_split(x, [7, 100, 101, 250]))

    found = nearest_cells(chunks, 300, k=10, n_comps=20, seed=0)
    assert found.shape == (300, 10) and found.dtype == np.int64
    assert not (found == np.arange(300)[:, None]).any()
    assert (groups[found] == groups[:, None]).all()
    # against exact cosine neighbours of exact principal components, on rows with 20
    # directions of structure
    x = (rng.standard_normal((300, 20)) @ rng.standard_normal((20, 200))).astype(np.float32)
    x += 0.1 * rng.standard_normal((300, 200)).astype(np.float32) + 5
    found = nearest_cells(chunks, 300, k=10, n_comps=20, seed=0)
    u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
    pcs = u[:, :20] * s[:20]
    pcs /= np.linalg.norm(pcs, axis=1, keepdims=True)
    exact = NearestNeighbors(n_neighbors=11).fit(pcs).kneighbors(pcs, return_distance=False)
    shared = np.mean([len(set(a) & set(b[1:])) / 10 for a, b in zip(found, exact, strict=True)])
    # measured: all of the exact neighbours found
    assert shared > 0.9, shared
    # k is capped at the other cells
    assert nearest_cells(lambda: iter([x[:5]]), 5, k=10, n_comps=3).shape == (5, 4)


def test_nearest_cells_search_approximately_beyond_4096_cells():
    rng = np.random.default_rng(1)
    groups = np.arange(6000) % 20
    centres = 3 * rng.standard_normal((20, 60))
    x = (centres[groups] + rng.standard_normal((6000, 60)) + 5).astype(np.float32)
    found = nearest_cells(lambda: iter(np.array_split(x, 6)), 6000, k=15, n_comps=30, seed=0)
    assert found.shape == (6000, 15) and found.dtype == np.int64
    assert not (found == np.arange(6000)[:, None]).any()
    assert all(len(set(row)) == 15 for row in found[:500])
    # measured: every neighbour from the cell's own group
    assert (groups[found] == groups[:, None]).mean() > 0.99


def test_the_training_loader_batches_input_neighbourhoods(pbmc_small):
    adata = pbmc_small.copy()
    ExceiverModel.setup_anndata(adata)
    model = ExceiverModel(adata, neighbour_preservation=1.0)
    cells = np.arange(adata.n_obs)
    model._fit_statistics(cells)
    neighbours = model._input_neighbourhoods(cells, chunked=False)["neighbourhoods"]
    assert neighbours.shape == (adata.n_obs, 15)
    assert not (neighbours == cells[:, None]).any()
    loader = ExceiverDataLoader(
        model.adata_manager, indices=cells, shuffle=True, batch_size=64, neighbourhoods=neighbours
    )
    assert isinstance(loader.sampler.sampler, NeighbourhoodSampler)
    assert len(next(iter(loader))["gene_idx"]) == 64
    # the minibatches come in neighbourhoods of 4 cells, which mostly share a cell type
    labels = adata.obs["cell_type"].to_numpy()
    first = np.asarray([positions for positions in loader.sampler][:-1])  # full batches
    groups = labels[first].reshape(-1, 4)
    within = (groups[:, 1:] == groups[:, :1]).mean()
    chance = (labels[first][:, :, None] == labels[first][:, None, :]).mean()
    # measured: 0.81 within, against 0.34 for any two cells of a minibatch
    assert within > chance + 0.3, (within, chance)


def test_length_bucketing_reorders_whole_neighbourhoods_into_batches_of_alike_lengths():
    rng = np.random.default_rng(0)
    neighbours = _ring_neighbours(1000, 6)
    # neighbours (the next cells around the ring) have alike lengths, as similar cells do
    ring = np.sin(np.linspace(0, 2 * np.pi, 1000, endpoint=False))
    lengths = (1600 + 1400 * ring + rng.integers(-100, 100, 1000)).astype(int)
    plain = NeighbourhoodSampler(neighbours, 4, seed=2)
    bucketed = NeighbourhoodSampler(neighbours, 4, seed=2, lengths=lengths, batch_size=64)
    a, b = np.asarray(list(plain)), np.asarray(list(bucketed))
    assert len(b) == len(bucketed) == 1000
    # the same neighbourhoods, only in another order, each still whole
    as_set = lambda order: sorted(map(tuple, order.reshape(-1, 4)))  # noqa: E731
    assert as_set(a) == as_set(b)
    for visited, *rest in b.reshape(-1, 4):
        assert set(rest) <= set(neighbours[visited])

    def padded(order):  # tokens of padded minibatches of 64 (the last one partial)
        batches = np.split(order, range(64, 1000, 64))
        return sum(lengths[batch].max() * len(batch) for batch in batches)

    # measured: 1.89x the expressed genes without bucketing, 1.07x with
    assert padded(b) < 0.75 * padded(a), (padded(a) / lengths.sum(), padded(b) / lengths.sum())
    with pytest.raises(ValueError, match="multiple of group_size"):
        NeighbourhoodSampler(neighbours, 4, lengths=lengths, batch_size=50)


def _window_scores(n: int) -> np.ndarray:
    """Points of 10 well separated clusters, with cluster i % 10 for row i."""
    centres = np.random.default_rng(1).normal(size=(10, 8)) * 10
    return centres[np.arange(n) % 10] + np.random.default_rng(2).normal(size=(n, 8))


def test_chunked_neighbourhoods_come_from_the_visited_cells_window():
    rows = np.random.default_rng(0).permutation(3000)[:2700]
    scores = _window_scores(3000)[rows]
    sampler = ChunkNeighbourhoodSampler(rows, scores, chunk_size=50, window_chunks=4, seed=0)
    order = np.asarray(list(sampler))
    assert len(order) == len(sampler) == 2700
    groups = order[: 2700 // 4 * 4].reshape(-1, 4)
    # the visited cells are distinct, and each neighbourhood lies in one window
    assert len(set(groups[:, 0])) == len(groups)
    windows = list(sampler._windows(torch.Generator().manual_seed(0)))  # epoch 0's
    window_of = np.empty(2700, dtype=int)
    for w, cells in enumerate(windows):
        window_of[cells.numpy()] = w
    assert (window_of[groups] == window_of[groups[:, :1]]).all()
    assert np.mean([np.unique(rows[c.numpy()] // 50).size for c in windows]) <= 4
    assert all(len(set(rest)) == 3 and visited not in rest for visited, *rest in groups)
    # from the visited cell's cluster, which a random cell shares 10 % of the time
    cluster = rows[groups] % 10
    assert (cluster[:, 1:] == cluster[:, :1]).mean() > 0.95
    # minibatches of 64 touch a few blocks, as chunk shuffling's do
    per_batch = [np.unique(rows[order[i : i + 64]] // 50).size for i in range(0, 2700, 64)]
    assert max(per_batch) <= 8
    # a fresh draw every epoch, the same one again for the same epoch
    second = list(sampler)
    assert second != order.tolist()
    sampler.set_epoch(0)
    assert list(sampler) == order.tolist()


def test_chunked_neighbourhoods_shard_ranks_and_survive_tiny_windows():
    rows = np.arange(1003)
    scores = _window_scores(1003)
    shards = [
        np.asarray(
            list(
                ChunkNeighbourhoodSampler(
                    rows, scores, chunk_size=25, window_chunks=2, seed=4, num_replicas=2, rank=r
                )
            )
        )
        for r in (0, 1)
    ]
    assert [len(s) for s in shards] == [502, 502]
    # each rank reads its own blocks: at most the block at the cut is shared
    blocks = [set(s // 25) for s in shards]
    assert len(blocks[0] & blocks[1]) <= 2
    # windows smaller than a neighbourhood (3 cells) repeat their cells
    tiny = ChunkNeighbourhoodSampler(np.arange(3), scores[:3], chunk_size=1, window_chunks=1)
    order = list(tiny)
    assert len(order) == 3 and set(order) <= {0, 1, 2}
    with pytest.raises(ValueError, match="one row per position"):
        ChunkNeighbourhoodSampler(rows, scores[:10])
    with pytest.raises(ValueError, match="group_size"):
        ChunkNeighbourhoodSampler(rows, scores, group_size=17, k=15)


@pytest.fixture(scope="module")
def two_batch_file(pbmc_small, tmp_path_factory):
    """600 real cells in two batches, written to disk and opened backed."""
    adata = pbmc_small.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    path = tmp_path_factory.mktemp("backed") / "two_batch.h5ad"
    adata.write_h5ad(path)
    return path


def _train_one_epoch(model, **kwargs):
    model.train(
        max_epochs=1,
        seed=0,
        accelerator="cpu",
        batch_size=64,
        early_stopping=False,
        enable_progress_bar=False,
        **kwargs,
    )
    loss = float(model.history["train_loss"].to_numpy().ravel()[-1])
    assert np.isfinite(loss)
    return model.trainer.train_dataloader


def test_the_default_with_batches_trains_chunked_from_disk_and_bucketed_in_memory(two_batch_file):
    import anndata as ad

    small = {"n_latents": 4, "dim": 16, "n_layers": 1, "ff_dim": 32, "head_hidden": 16}
    backed = ad.read_h5ad(two_batch_file, backed="r")
    ExceiverModel.setup_anndata(backed, batch_key="batch")
    model = ExceiverModel(backed, **small)
    assert model.module.neighbour_preservation > 0
    loader = _train_one_epoch(model, datasplitter_kwargs={"chunk_size": 64, "window_chunks": 2})
    assert isinstance(loader.sampler.sampler, ChunkNeighbourhoodSampler)  # chunked by default
    # neighbourhoods of 4 from windows of 2 blocks, whole in every minibatch
    order = np.asarray(list(loader.sampler.sampler))
    rows = loader.indices[order]
    assert max(np.unique(rows[i : i + 64] // 64).size for i in range(0, len(rows), 64)) <= 4

    in_memory = ad.read_h5ad(two_batch_file)
    ExceiverModel.setup_anndata(in_memory, batch_key="batch")
    model = ExceiverModel(in_memory, **small)
    loader = _train_one_epoch(model, length_bucketing=True)
    sampler = loader.sampler.sampler
    assert isinstance(sampler, NeighbourhoodSampler) and sampler.lengths is not None
    with pytest.raises(ValueError, match="multiple of 4"):
        model.train(max_epochs=1, batch_size=50, length_bucketing=True)
