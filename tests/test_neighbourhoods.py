"""Minibatches of input neighbourhoods, for ``neighbour_preservation``."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from scexceiver import ExceiverModel
from scexceiver.data import ExceiverDataLoader, NeighbourhoodSampler, nearest_cells


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
    neighbours = model._input_neighbours(cells)
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


def test_neighbourhoods_refuse_chunked_and_bucketed_training(pbmc_small):
    adata = pbmc_small[:100].copy()
    ExceiverModel.setup_anndata(adata)
    model = ExceiverModel(adata, neighbour_preservation=1.0)
    before = adata.X.copy()
    for option in ({"length_bucketing": True}, {"chunked": True}):
        with pytest.raises(ValueError, match="minibatches of neighbourhoods"):
            model.train(max_epochs=1, **option)
    assert not model.is_trained_ and (adata.X != before).nnz == 0
