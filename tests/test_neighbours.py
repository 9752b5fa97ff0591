"""Input neighbours kept in the embedding (``neighbour_preservation``)."""

import math

import numpy as np
import pytest
import scvi
import torch

import scexceiver
from scexceiver import ExceiverModel
from scexceiver.data import tokenize_counts
from scexceiver.module._neighbours import (
    input_affinities,
    input_neighbours,
    neighbour_cross_entropy,
)

SMALL = {"n_latents": 8, "dim": 32, "n_layers": 1, "ff_dim": 64, "head_hidden": 32}


def _four_groups(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 50) cells around 4 well-separated centres, and each cell's group."""
    centres = 5 * torch.randn(4, 50, generator=generator)
    groups = torch.arange(n) % 4
    return centres[groups] + torch.randn(n, 50, generator=generator), groups


def _assert_distributions_over_other_cells(target: torch.Tensor) -> None:
    torch.testing.assert_close(target.sum(1), torch.ones(len(target)))
    assert (target.diagonal() == 0).all()


def test_input_neighbours_are_the_most_similar_other_cells():
    generator = torch.Generator().manual_seed(0)
    values, groups = _four_groups(40, generator)
    target = input_neighbours(values, k=3)
    _assert_distributions_over_other_cells(target)
    assert ((target > 0).sum(1) == 3).all()
    # every neighbour is from the cell's own group (10 cells each)
    rows, cols = target.nonzero(as_tuple=True)
    assert (groups[rows] == groups[cols]).all()
    # cosine similarity: scaling a cell changes nothing
    scaled = values * (0.5 + torch.rand(40, 1, generator=generator))
    torch.testing.assert_close(input_neighbours(scaled, k=3), target)
    # k is capped at the other cells; a single cell has none
    assert ((input_neighbours(values[:3], k=5) > 0).sum(1) == 2).all()
    assert input_neighbours(values[:1], k=5).sum() == 0


def test_input_affinities_have_the_perplexity_and_follow_similarity():
    generator = torch.Generator().manual_seed(0)
    values, groups = _four_groups(64, generator)
    target = input_affinities(values, perplexity=8.0)
    _assert_distributions_over_other_cells(target)
    entropy = -(target * target.clamp_min(1e-30).log()).sum(1)
    torch.testing.assert_close(entropy.exp(), torch.full((64,), 8.0), rtol=1e-3, atol=0)
    # spread over the cell's own group (16 cells), more on the more similar cells
    within = (target * (groups[:, None] == groups[None, :])).sum(1)
    assert (within > 0.99).all(), within.min()
    similarity = (
        torch.nn.functional.normalize(values, dim=1)
        @ torch.nn.functional.normalize(values, dim=1).T
    )
    for i in range(64):
        others = torch.arange(64) != i
        order = similarity[i, others].argsort()
        assert (target[i, others][order].diff() >= 0).all()
    # cosine similarity: scaling a cell changes nothing; a larger perplexity spreads more
    scaled = values * (0.5 + torch.rand(64, 1, generator=generator))
    torch.testing.assert_close(input_affinities(scaled, 8.0), target, atol=1e-5, rtol=1e-4)
    # bf16 autocast (GPU training) leaves the similarities in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(input_affinities(values, 8.0), target)
    wide = input_affinities(values, perplexity=40.0)
    assert (wide * (groups[:, None] != groups[None, :])).sum(1).mean() > 0.2
    # the perplexity is capped at the other cells less one; fewer than 3 cells: none
    few = input_affinities(values[:4], perplexity=40.0)
    torch.testing.assert_close(
        (-(few * few.clamp_min(1e-30).log()).sum(1)).exp(),
        torch.full((4,), 2.0),
        rtol=1e-3,
        atol=0,
    )
    assert input_affinities(values[:2], 8.0).sum() == 0


def test_neighbour_cross_entropy_is_low_when_the_embedding_keeps_the_neighbours():
    generator = torch.Generator().manual_seed(0)
    groups = torch.arange(64) % 4
    values = (5 * torch.randn(4, 30, generator=generator))[groups] + torch.randn(
        64, 30, generator=generator
    )
    target = input_neighbours(values, k=5)
    kept = neighbour_cross_entropy(values, target, temperature=0.1)
    order = torch.randperm(64, generator=generator)
    shuffled = neighbour_cross_entropy(values[order], target, temperature=0.1)
    constant = neighbour_cross_entropy(torch.ones(64, 8), target, 0.1)
    # a constant embedding spreads each cell evenly over the 63 others
    assert constant.item() == pytest.approx(math.log(63), rel=1e-5)
    # kept: about as if each cell were spread evenly over its 15 group mates (measured
    # 2.63 against log 15 = 2.71); shuffled: worse than constant (measured 7.84)
    assert kept.item() < math.log(15) < constant.item() < shuffled.item()


def test_the_neighbour_loss_is_a_training_loss_only_with_its_weight(training_only_loss):
    neighbour = training_only_loss("neighbour_preservation", 2.0, "neighbour_loss")
    # the default's soft targets (perplexity 15): between a perfect fit (their entropy,
    # log 15) and the worst placement; a constant embedding gives log 31
    assert math.log(15) < neighbour.item() < 2 * math.log(31)


def test_the_default_targets_are_soft_and_none_restores_the_nearest_five(
    pbmc_small, two_batch_module
):
    tokens = tokenize_counts(pbmc_small.X[:32])
    batch = (torch.arange(32) % 2).view(-1, 1)
    tokens[scvi.REGISTRY_KEYS.BATCH_KEY] = batch
    assert two_batch_module(pbmc_small).neighbour_perplexity == 15.0
    targets = {15.0: lambda z: input_affinities(z, 15.0), None: lambda z: input_neighbours(z, 5)}
    for perplexity, target in targets.items():
        module = two_batch_module(
            pbmc_small, neighbour_preservation=1.0, neighbour_perplexity=perplexity
        )
        module.train()
        inference, _, _ = module(
            tokens, inference_kwargs={"generator": torch.Generator().manual_seed(1)}
        )
        z = module._standardised_panel(
            tokens["gene_idx"], tokens["counts"], tokens["library_size"], batch, None
        )
        expected = neighbour_cross_entropy(module.embed(inference["latents"]), target(z), 0.1)
        torch.testing.assert_close(inference["neighbour_loss"], expected)
    with pytest.raises(ValueError, match="neighbour_perplexity must be above 1"):
        two_batch_module(pbmc_small, neighbour_preservation=1.0, neighbour_perplexity=1.0)


def test_the_target_is_the_panel_standardised_per_batch(pbmc_small, two_batch_module):
    """The neighbours come from each cell's whole panel under its batch's statistics."""
    module = two_batch_module(pbmc_small, neighbour_preservation=1.0)
    tokens = tokenize_counts(pbmc_small.X[:8])
    batch = (torch.arange(8) % 2).view(-1, 1)
    z = module._standardised_panel(
        tokens["gene_idx"], tokens["counts"], tokens["library_size"], batch, None
    )
    x = torch.as_tensor(pbmc_small.X[:8].toarray())
    log_values = torch.log1p(1e4 * x / x.sum(1, keepdim=True))
    normalizer = module.normalizer
    n = pbmc_small.n_vars
    mean = normalizer.batch_mean[batch.view(-1), :n]
    std = normalizer.batch_std[batch.view(-1), :n]
    expected = ((log_values - mean) / std).clamp(max=normalizer.clip)
    torch.testing.assert_close(z, expected, atol=1e-4, rtol=1e-4)
    # genes a cell's source did not measure are 0
    measured = torch.ones(8, n, dtype=torch.bool)
    measured[:, : n // 2] = False
    masked = module._standardised_panel(
        tokens["gene_idx"], tokens["counts"], tokens["library_size"], batch, measured
    )
    assert (masked[:, : n // 2] == 0).all()
    torch.testing.assert_close(masked[:, n // 2 :], z[:, n // 2 :])


def test_negative_neighbour_preservation_is_refused_before_training(pbmc_small):
    adata = pbmc_small[:100].copy()
    ExceiverModel.setup_anndata(adata)
    before = adata.X.copy()
    with pytest.raises(ValueError, match="neighbour_preservation must be >= 0"):
        ExceiverModel(adata, neighbour_preservation=-1.0)
    assert (adata.X != before).nnz == 0


def test_the_default_keeps_cell_types_mixes_batches_and_unties_the_gene_tables(
    shifted, shifted_runs
):
    """The default with batches against itself without the loss, trained alike.

    Same size, seed, epochs and batches; its minibatches are neighbourhoods of the whole
    training set's input neighbours. With the 5 nearest cells as targets, a shared gene
    table, trained alike, shows what the encoder's own table saves in reconstruction.
    """
    adata, _ = shifted
    runs = {}
    variants = {
        "default": {},
        "nearest five": {"neighbour_perplexity": None},
        "nearest five, shared table": {"neighbour_perplexity": None, "tie_gene_embeddings": True},
    }
    for name, kwargs in variants.items():
        data = adata.copy()
        ExceiverModel.setup_anndata(data, batch_key="batch")
        scvi.settings.seed = 0
        model = ExceiverModel(data, **kwargs, **SMALL)
        model.train(max_epochs=15, batch_size=64, early_stopping=False, enable_progress_bar=False)
        runs[name] = model
    model = runs["default"]
    assert model.module.neighbour_preservation == 3.0
    assert model.module.neighbour_perplexity == 15.0
    assert model.module.network.encoder_gene_embedding is not None
    history = model.history["neighbour_loss_train"]["neighbour_loss_train"].to_numpy(dtype=float)
    # measured: the loss fell from 4.10 to 3.67 over 15 epochs
    assert np.all(np.isfinite(history)) and history[-1] < history[0] - 0.3, history
    labels = data.obs["cell_type"].to_numpy()
    without = shifted_runs["default batch options"]
    plain = scexceiver.tl.knn_label_accuracy(without["embedding"], labels)["macro_f1"]
    for run in (runs["default"], runs["nearest five"]):
        embedding = run.get_latent_representation()
        knn = scexceiver.tl.knn_label_accuracy(embedding, labels)["macro_f1"]
        mixing = scexceiver.tl.batch_mixing(embedding, data.obs["batch"].to_numpy())
        # measured: kNN macro-F1 0.452 (soft targets) and 0.515 (nearest five) against
        # 0.352 without the loss; batch mixing 0.980 and 0.984 against 0.974 (1: chance)
        assert knn > plain + 0.06, (knn, plain)
        assert mixing > without["mixing"] - 0.05, (mixing, without["mixing"])
    # measured: validation masked MSE 0.474 (default), 0.457 (nearest five, untied),
    # 0.508 (nearest five, shared table), 0.357 without the loss
    error = {
        name: run.get_reconstruction_error(indices=run.validation_indices)["masked_mse"]
        for name, run in runs.items()
    }
    assert error["nearest five"] < error["nearest five, shared table"] * 0.95, error
    assert error["default"] < without["masked_mse"] * 1.4, (error, without["masked_mse"])
