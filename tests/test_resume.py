"""Reproducibility (seed) and checkpoint/resume equivalence on CPU."""

import numpy as np
import pytest
import scvi
import torch

import scexceiver

TINY = {"n_latents": 4, "dim": 16, "n_layers": 1, "ff_dim": 32}
TRAIN = {
    "accelerator": "cpu",
    "batch_size": 64,
    "train_size": 0.8,
    "early_stopping": False,
    "check_val_every_n_epoch": 1,
    "enable_progress_bar": False,
}


@pytest.fixture(scope="module")
def cells(pbmc_small):
    return pbmc_small[:160].copy()


def _model(adata, init_seed=0):
    scvi.settings.seed = init_seed
    adata = adata.copy()
    scexceiver.ExceiverModel.setup_anndata(adata)
    return scexceiver.ExceiverModel(adata, **TINY)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_seed_makes_runs_bit_identical(cells):
    runs = []
    for _ in range(2):
        model = _model(cells)
        model.train(max_epochs=2, seed=3, **TRAIN)
        runs.append(model)
    _assert_same(_weights(runs[0]), _weights(runs[1]))
    for key in ("train_loss", "validation_loss"):
        np.testing.assert_array_equal(
            runs[0].history[key].to_numpy(), runs[1].history[key].to_numpy()
        )
    # a different seed changes the split, the shuffling and the masks
    other = _model(cells)
    other.train(max_epochs=2, seed=4, **TRAIN)
    assert not np.array_equal(other.validation_indices, runs[0].validation_indices)
    assert not torch.equal(
        _weights(other)["network.gene_embedding.weight"],
        _weights(runs[0])["network.gene_embedding.weight"],
    )


def test_resume_reaches_the_uninterrupted_weights(cells, tmp_path):
    full = _model(cells)
    full.train(max_epochs=4, seed=5, **TRAIN)

    first = _model(cells)
    first.train(max_epochs=2, seed=5, checkpoint_dir=tmp_path, **TRAIN)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [
        "epoch=0-step=2.ckpt",
        "epoch=1-step=4.ckpt",
        "last.ckpt",
    ]
    interrupted = _weights(first)
    # a fresh process would start from different weights and RNG state
    resumed = _model(cells, init_seed=99)
    torch.rand(7)
    resumed.train(max_epochs=4, seed=5, checkpoint_dir=tmp_path, resume_from="last", **TRAIN)

    _assert_same(_weights(resumed), _weights(full))
    assert not torch.equal(
        interrupted["network.gene_embedding.weight"],
        _weights(full)["network.gene_embedding.weight"],
    )
    np.testing.assert_array_equal(
        resumed.history["train_loss"].to_numpy()[-2:], full.history["train_loss"].to_numpy()[-2:]
    )
    assert (tmp_path / "epoch=3-step=8.ckpt").is_file()


def test_resume_from_missing_checkpoint_fails_before_training(cells, tmp_path):
    model = _model(cells)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        model.train(max_epochs=1, checkpoint_dir=tmp_path, resume_from="last", **TRAIN)
    with pytest.raises(ValueError, match="needs checkpoint_dir"):
        model.train(max_epochs=1, resume_from="last", **TRAIN)
    assert not model.is_trained_
