"""Cycle consistency across batches (``cycle_consistency``)."""

import numpy as np
import pytest
import scvi
import torch

import scexceiver
from scexceiver import ExceiverModel
from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.module._module import relative_gap
from scexceiver.module._normalize import ExpressionNormalizer

SMALL = {"n_latents": 8, "dim": 32, "n_layers": 1, "ff_dim": 64, "head_hidden": 32}


def test_relative_gap_is_zero_for_equal_pairs_and_two_for_independent_ones():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(4000, 16, generator=generator)
    second = torch.randn(4000, 16, generator=generator)
    assert relative_gap(first, first).item() == 0.0
    assert relative_gap(first, second).item() == pytest.approx(2.0, abs=0.05)
    # it measures distance against the spread: the same for rescaled and shifted sets
    scaled = relative_gap(10 * first + 3, 10 * second + 3)
    torch.testing.assert_close(scaled, relative_gap(first, second))
    # a pair much closer than the spread scores near 0
    assert relative_gap(first, first + 0.1 * second).item() < 0.05


def test_processed_values_map_back_to_log_values_and_to_another_batch(pbmc_small):
    stats = gene_statistics(pbmc_small.X)
    normalizer = ExpressionNormalizer(pbmc_small.n_vars, n_batch=2)
    normalizer.set_statistics(stats.mean, stats.std)
    shift = torch.linspace(-1, 1, pbmc_small.n_vars)
    normalizer.set_batch_statistics(
        torch.stack([torch.as_tensor(stats.mean), torch.as_tensor(stats.mean) + shift]),
        torch.stack([torch.as_tensor(stats.std)] * 2),
    )
    tokens = tokenize_counts(pbmc_small.X[:16])
    counts, library, genes = tokens["counts"], tokens["library_size"], tokens["gene_idx"]
    log_values = torch.log1p(1e4 * counts / library.unsqueeze(1))
    values = normalizer(counts, library, genes)
    torch.testing.assert_close(values, normalizer.standardise(log_values, genes))
    unclipped = values < normalizer.clip + 1
    assert unclipped.float().mean() > 0.99
    back = normalizer.log_values(values, genes)
    torch.testing.assert_close(back[unclipped], log_values[unclipped], atol=1e-4, rtol=1e-4)
    # standardised as batch 1, a value sits lower by the batch's shift over the std
    other = torch.ones(16, 1, dtype=torch.long)
    as_other = normalizer.standardise(log_values, genes, other)
    padded_shift = torch.cat([shift, torch.zeros(1)])  # the padding index is neutral
    expected = values - padded_shift[genes] / normalizer.std[genes]
    torch.testing.assert_close(as_other[unclipped], expected[unclipped], atol=1e-4, rtol=1e-4)


def test_the_cycle_gap_is_a_training_loss_only_with_its_weight(training_only_loss):
    gap = training_only_loss("cycle_consistency", 0.5, "cycle_gap")
    assert 0 < gap.item() < 2


@pytest.mark.parametrize(
    ("weight", "batches", "overrides", "match"),
    [
        (-0.1, 2, {}, "cycle_consistency must be >= 0"),
        (0.5, 1, {}, "at least two batches"),
        (
            0.5,
            2,
            {"token_mode": "dense", "n_visible_queries": 0, "n_random_queries": 0},
            "token_mode='sparse'",
        ),
    ],
)
def test_bad_cycle_consistency_is_refused_before_training(
    pbmc_small, weight, batches, overrides, match
):
    adata = pbmc_small[:100].copy()
    adata.obs["batch"] = np.arange(adata.n_obs) % batches
    ExceiverModel.setup_anndata(adata, batch_key="batch")
    before = adata.X.copy()
    with pytest.raises(ValueError, match=match):
        ExceiverModel(adata, cycle_consistency=weight, input_thinning=0.0, **overrides)
    assert (adata.X != before).nnz == 0


def test_cycle_consistency_mixes_a_batch_the_encoder_can_see(shifted, shifted_runs):
    """With the per-batch options off, the encoder sees the shift; the cycle removes it."""
    adata, _ = shifted
    data = adata.copy()
    ExceiverModel.setup_anndata(data, batch_key="batch")
    off = {"batch_standardise": False, "batch_output_bias": False, "batch_context": False}
    scvi.settings.seed = 0
    model = ExceiverModel(data, cycle_consistency=1.0, **off, **SMALL)
    model.train(max_epochs=15, batch_size=64, early_stopping=False, enable_progress_bar=False)
    gap = model.history["cycle_gap_train"]["cycle_gap_train"].to_numpy(dtype=float)
    assert np.all(np.isfinite(gap)) and gap[-1] < gap[0]
    embedding = model.get_latent_representation()
    mixing = scexceiver.tl.batch_mixing(embedding, data.obs["batch"].to_numpy())
    baseline = shifted_runs["no batch options"]["mixing"]
    # measured: 0.96 against 0.08 without the cycle (1: as mixed as chance); the gap
    # fell from 0.30 to 0.03
    assert mixing > 0.8 and mixing > baseline + 0.5, (mixing, baseline)
    # and the cells keep their types (measured: kNN accuracy 0.63 against 0.64)
    labels = data.obs["cell_type"].to_numpy()
    knn = scexceiver.tl.knn_label_accuracy(embedding, labels)["accuracy"]
    plain = scexceiver.tl.knn_label_accuracy(shifted_runs["no batch options"]["embedding"], labels)
    assert knn > plain["accuracy"] - 0.06, (knn, plain["accuracy"])
