import numpy as np
import pytest
import torch
from scipy import sparse
from torch.utils.data import BatchSampler, SequentialSampler

import scexceiver
from scexceiver.data import ExceiverDataLoader, LengthGroupedSampler
from scexceiver.data._sampler import expressed_genes_per_cell


def _padding(lengths, batches):
    """Fraction of padded slots when each batch is padded to its longest cell."""
    padded = sum(lengths[b].max() * len(b) for b in batches)
    return 1 - sum(lengths[b].sum() for b in batches) / padded


def test_every_cell_once_per_epoch_and_batches_of_similar_length(pbmc):
    lengths = np.diff(pbmc.X.indptr)
    sampler = LengthGroupedSampler(lengths, 64, seed=0)
    epochs = []
    for _ in range(2):
        batches = [np.array(b) for b in BatchSampler(sampler, 64, drop_last=False)]
        order = np.concatenate(batches)
        np.testing.assert_array_equal(np.sort(order), np.arange(pbmc.n_obs))
        assert [len(b) for b in batches] == [64] * 42 + [pbmc.n_obs % 64]
        epochs.append(batches)
    # a fresh composition and order every epoch
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    assert {tuple(b) for b in epochs[0]} != {tuple(b) for b in epochs[1]}
    random_batches = np.array_split(np.random.default_rng(0).permutation(pbmc.n_obs), 43)
    assert _padding(lengths, random_batches) > 0.35
    assert _padding(lengths, epochs[0]) < 0.15
    # the same seed gives the same epochs
    again = LengthGroupedSampler(lengths, 64, seed=0)
    assert list(again) == [int(i) for i in np.concatenate(epochs[0])]


def test_loader_with_length_bucketing_yields_every_cell_once(pbmc_small):
    adata = pbmc_small.copy()
    scexceiver.ExceiverModel.setup_anndata(adata)
    manager = scexceiver.ExceiverModel._get_most_recent_anndata_manager(adata)
    indices = np.arange(0, adata.n_obs, 2)
    loader = ExceiverDataLoader(
        manager, indices=indices, batch_size=50, shuffle=True, length_bucketing=True
    )
    assert isinstance(loader.sampler.sampler, LengthGroupedSampler)
    libraries, padding = [], []
    for batch in loader:
        libraries.append(batch["library_size"])
        padding.append(1 - batch["token_mask"].float().mean())
    expected = np.asarray(adata.X[indices].sum(1)).ravel()
    np.testing.assert_allclose(np.sort(torch.cat(libraries).numpy()), np.sort(expected))
    assert float(np.mean(padding)) < 0.2
    # not shuffling (validation, inference): plain sequential batches
    plain = ExceiverDataLoader(manager, indices=indices, batch_size=50, length_bucketing=True)
    assert isinstance(plain.sampler.sampler, SequentialSampler)
    with pytest.raises(ValueError, match="default sampler"):
        ExceiverDataLoader(
            manager,
            indices=indices,
            shuffle=True,
            sampler=SequentialSampler(indices),
            length_bucketing=True,
        )


def test_expressed_genes_per_cell_from_any_layout(pbmc_small):
    x = pbmc_small.X
    indices = np.array([5, 0, 17, 3])
    expected = np.diff(x.indptr)[indices]
    for layout in (x, x.toarray(), sparse.csc_matrix(x)):
        np.testing.assert_array_equal(
            expressed_genes_per_cell(layout, indices, chunk_size=3), expected
        )
