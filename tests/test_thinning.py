"""Depth augmentation of the encoder's input (``input_thinning``)."""

import numpy as np
import pytest
import torch

from scexceiver import ExceiverModel
from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.model._presets import resolve_preset
from scexceiver.module import ExceiverModule, thin_counts


def _module(adata, **overrides):
    torch.manual_seed(0)
    module = ExceiverModule(adata.n_vars, 0, **resolve_preset("default", **overrides))
    module.fit_statistics(gene_statistics(adata.X))
    return module


def test_thinning_keeps_a_fraction_of_each_cells_counts(pbmc_small):
    tokens = tokenize_counts(pbmc_small.X)
    counts, library = tokens["counts"], tokens["library_size"]
    generator = torch.Generator().manual_seed(0)
    thinned, thinned_library = thin_counts(counts, library, 0.5, generator)
    assert thinned.shape == counts.shape and thinned.dtype == counts.dtype
    assert torch.all(thinned <= counts) and torch.all(thinned >= 0)
    assert torch.equal(thinned, thinned.round())
    token_total = counts.sum(1)
    kept = thinned.sum(1) / token_total
    rate = thinned_library / library
    # each cell's rate is drawn from [0.5, 1] and its counts follow it
    assert rate.min() >= 0.5 and rate.max() <= 1.0
    assert abs(rate.mean().item() - 0.75) < 0.03
    deep = token_total > 1000
    assert deep.sum() > 300
    assert (kept[deep] - rate[deep]).abs().max() < 0.06
    # a shallower cell loses genes of few counts: fewer detected genes
    assert ((thinned > 0).sum(1) < (counts > 0).sum(1)).float().mean() > 0.95
    # a fraction of 0 keeps every count
    same, same_library = thin_counts(counts, library, 0.0, generator)
    assert torch.equal(same, counts) and torch.equal(same_library, library)


def test_thinning_acts_on_the_encoders_input_in_training_only(pbmc_small):
    plain = _module(pbmc_small, input_thinning=0.0)
    thinned = _module(pbmc_small, input_thinning=0.6)
    thinned.load_state_dict(plain.state_dict())
    tokens = tokenize_counts(pbmc_small.X[:32])

    def run(module, training):
        module.train(training)
        with torch.no_grad():
            return module.inference(
                **module._get_inference_input(tokens),
                generator=torch.Generator().manual_seed(1),
            )

    # validation and embedding see every count: identical to the unthinned module
    for a, b in zip(run(plain, False).values(), run(thinned, False).values(), strict=True):
        if a is not None:
            torch.testing.assert_close(a, b)
    base, aug = run(plain, True), run(thinned, True)
    # in training the encoder sees fewer genes, and the latents change
    assert aug["attn_mask"].sum() < 0.95 * base["attn_mask"].sum()
    assert not torch.allclose(aug["latents"], base["latents"])
    # the decoding targets keep every count: each query's target is the unthinned value
    values = plain.normalizer(tokens["counts"], tokens["library_size"], tokens["gene_idx"])
    for row in range(4):
        lookup = dict(zip(tokens["gene_idx"][row].tolist(), values[row].tolist(), strict=True))
        masked = aug["query_masked"][row]
        for gene, target in zip(
            aug["query_idx"][row][masked].tolist(),
            aug["target"][row][masked].tolist(),
            strict=True,
        ):
            assert target == pytest.approx(lookup[gene], rel=1e-5)


@pytest.mark.parametrize(
    ("value", "overrides", "match"),
    [
        (1.0, {}, r"input_thinning must be in \[0, 1\)"),
        (-0.1, {}, r"input_thinning must be in \[0, 1\)"),
        (0.5, {"token_mode": "dense", "n_visible_queries": 0, "n_random_queries": 0}, "sparse"),
    ],
)
def test_bad_thinning_is_refused_before_training(pbmc_small, value, overrides, match):
    adata = pbmc_small[:100].copy()
    ExceiverModel.setup_anndata(adata)
    before = adata.X.copy()
    with pytest.raises(ValueError, match=match):
        ExceiverModel(adata, input_thinning=value, **overrides)
    assert (adata.X != before).nnz == 0


def test_the_default_thins_with_two_or_more_batches_only(pbmc_small):
    adata = pbmc_small[:120, :300].copy()
    ExceiverModel.setup_anndata(adata)
    assert ExceiverModel(adata).module.input_thinning == 0.0
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    ExceiverModel.setup_anndata(adata, batch_key="batch")
    model = ExceiverModel(adata)
    assert model.module.input_thinning == 0.8
    assert model.init_params_["kwargs"]["model_kwargs"]["input_thinning"] == 0.8
    assert ExceiverModel(adata, preset="paper").module.input_thinning == 0.0


def test_a_model_trained_with_thinning_learns(pbmc_small):
    adata = pbmc_small.copy()
    ExceiverModel.setup_anndata(adata)
    torch.manual_seed(0)
    model = ExceiverModel(
        adata, input_thinning=0.5, n_latents=8, dim=32, n_layers=1, ff_dim=64, head_hidden=32
    )
    model.train(max_epochs=6, early_stopping=False, check_val_every_n_epoch=1, batch_size=64)
    assert model.module.input_thinning == 0.5
    loss = model.history["validation_loss"]["validation_loss"].to_numpy(dtype=float)
    assert np.all(np.isfinite(loss))
    assert loss[-1] < 0.9 * loss[0]
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 8 * 32) and np.isfinite(z).all()
