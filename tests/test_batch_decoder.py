"""The batch on the decoder's side: a per-(batch, gene) output bias started at each
batch's level (``batch_output_bias``) and batch-conditioned latents (``batch_context``)."""

import numpy as np
import scvi
import torch

from scexceiver import ExceiverModel
from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.module import Exceiver, ExpressionNormalizer, batch_level_shifts

SMALL = {"n_latents": 8, "dim": 32, "n_layers": 1, "ff_dim": 64, "head_hidden": 32}


def test_shifts_are_each_batchs_mean_processed_value_in_pooled_units(shifted):
    adata, genes = shifted
    x = adata.X
    batch = (adata.obs["batch"] == "stim").to_numpy().astype(int)
    pooled = gene_statistics(x)
    per_batch = [gene_statistics(x, np.flatnonzero(batch == b)) for b in (0, 1)]
    shifts = batch_level_shifts(pooled, per_batch, prior_cells=0).numpy()
    assert shifts.shape == (2, 2, adata.n_vars)
    # by default, shrunk toward 0 by the cells behind each shift
    shrunk = batch_level_shifts(pooled, per_batch, prior_cells=10).numpy()
    n = np.array([s.n_cells for s in per_batch])
    detected = np.stack([s.detection_rate * s.n_cells for s in per_batch])
    np.testing.assert_allclose(shrunk[1], shifts[1] * (n / (n + 10))[:, None], rtol=1e-5)
    np.testing.assert_allclose(shrunk[0], shifts[0] * detected / (detected + 10), rtol=1e-4)
    normalizer = ExpressionNormalizer(adata.n_vars, clip=np.inf)
    normalizer.set_statistics(torch.from_numpy(pooled.mean), torch.from_numpy(pooled.std))
    tokens = tokenize_counts(x)
    values = normalizer(tokens["counts"], tokens["library_size"], tokens["gene_idx"]).numpy()
    mask = tokens["token_mask"].numpy()
    dense = np.full((x.shape[0], x.shape[1] + 1), np.nan)
    rows = np.nonzero(mask)[0]
    dense[rows, tokens["gene_idx"].numpy()[mask]] = values[mask]
    dense = dense[:, :-1]
    zero_value = 1 - pooled.mean / pooled.std
    for b in (0, 1):
        cells = dense[batch == b]
        # over all cells (zeros at their processed value): the "any" query type
        level = np.where(np.isnan(cells), zero_value, cells).mean(0)
        np.testing.assert_allclose(1 + shifts[1, b], level, atol=1e-4)
        # over the cells where the gene is detected: the "expressed" query type
        seen = per_batch[b].detection_rate > 0
        expressed = np.nanmean(cells[:, seen], axis=0)
        np.testing.assert_allclose(
            pooled.expressed_mean[seen] + shifts[0, b, seen], expressed, atol=1e-4
        )
        assert np.all(shifts[0, b, ~seen] == 0)
    # where detected, the 6x genes sit higher in "stim" than any other gene moves (log
    # units; measured: median 1.26, 5th percentile 1.14 against 0.47 for the 95th
    # percentile of the others, which move by the larger library)
    gap = (shifts[0, 1] - shifts[0, 0]) * pooled.std
    others = np.setdiff1d(np.arange(adata.n_vars), genes)
    assert np.median(gap[genes]) > 1.0
    assert np.percentile(gap[genes], 5) > np.percentile(np.abs(gap[others]), 95)


def test_decoder_adds_the_bias_of_each_cells_batch_and_query_type():
    torch.manual_seed(0)
    network = Exceiver(
        6,
        n_latents=4,
        dim=8,
        n_layers=1,
        ff_dim=16,
        n_batch=3,
        n_query_types=2,
        gene_output_bias=True,
        batch_output_bias=True,
    )
    offsets = torch.arange(2 * 3 * 6, dtype=torch.float32).view(2, 3, 6)
    latents = torch.randn(3, 4, 8)
    query = torch.tensor([[0, 5, 2], [1, 1, 3], [4, 0, 6]])
    qtype = torch.tensor([[0, 1, 1], [0, 0, 1], [1, 1, 0]])
    batch = torch.tensor([[2], [0], [1]])
    before = network.decode(latents, query, batch, qtype)
    network.init_batch_output_bias(offsets)
    after = network.decode(latents, query, batch, qtype)
    padded = torch.cat([offsets, torch.zeros(2, 3, 1)], dim=2)  # padding gene 6 stays 0
    expected = padded[qtype, batch.expand_as(query), query]
    torch.testing.assert_close(after - before, expected)
    # fewer than two batches: no such parameter
    assert Exceiver(6, n_batch=1, batch_output_bias=True).batch_output_bias is None


def test_the_defaults_batch_options_keep_a_shifted_batch_out_of_the_latents(
    shifted_runs, tmp_path
):
    mixing = {name: run["mixing"] for name, run in shifted_runs.items()}
    error = {name: run["masked_mse"] for name, run in shifted_runs.items()}
    # measured (1 thread): mixing 0.68 without the options, 0.97 with the bias alone, 0.98
    # for the default's batch options (without its neighbour loss); validation masked
    # MSE 0.398, 0.351, 0.350
    assert mixing["batch_output_bias"] > mixing["no batch options"] + 0.15
    assert mixing["default batch options"] > mixing["no batch options"] + 0.15
    assert error["default batch options"] < error["no batch options"] * 1.05
    model, data = (
        shifted_runs["default batch options"]["model"],
        shifted_runs["default batch options"]["data"],
    )
    # saved with its bias and conditioning, and reloaded to the same embedding
    model.save(tmp_path / "default")
    loaded = ExceiverModel.load(tmp_path / "default", adata=data)
    for name in ("batch_output_bias", "batch_context.batch.weight"):
        torch.testing.assert_close(
            loaded.module.network.get_parameter(name), model.module.network.get_parameter(name)
        )
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), shifted_runs["default batch options"]["embedding"]
    )


def test_the_default_uses_batches_only_when_there_are_two(pbmc_small):
    one = pbmc_small[:100, :300].copy()
    ExceiverModel.setup_anndata(one)
    model = ExceiverModel(one, **SMALL)
    network = model.module.network
    assert not model.module.batch_standardise and model.module.normalizer.batch_mean is None
    assert network.batch_output_bias is None and network.batch_context is None
    assert model.init_params_["kwargs"]["model_kwargs"]["batch_standardise"] is False
    two = one.copy()
    two.obs["batch"] = np.where(np.arange(two.n_obs) % 2, "a", "b")
    ExceiverModel.setup_anndata(two, batch_key="batch")
    model = ExceiverModel(two, **SMALL)
    network = model.module.network
    assert model.module.batch_standardise and model.module.normalizer.batch_mean.shape[0] == 2
    assert network.batch_output_bias.shape == (2, 2, 301)
    assert network.batch_context.batch.weight.shape[0] == 2
    assert model.init_params_["kwargs"]["model_kwargs"]["batch_standardise"] is True


def test_query_batches_start_at_their_own_level_shift(shifted):
    adata, genes = shifted
    reference_data = adata.copy()
    ExceiverModel.setup_anndata(reference_data, batch_key="batch")
    scvi.settings.seed = 0
    reference = ExceiverModel(reference_data, batch_output_bias=True, batch_context=True, **SMALL)
    reference.train(max_epochs=1, batch_size=64, warmup_steps=1, enable_progress_bar=False)
    # new batches: one of plain cells, one with the 6x genes
    query = adata[:300].copy()
    query.obs["batch"] = np.where(query.obs["batch"] == "stim", "donor_b", "donor_a")
    q = ExceiverModel.load_query_data(query, reference)
    bias = q.module.network.batch_output_bias.detach()
    codes = query.obs["_scvi_batch"].to_numpy()
    stim_code = int(codes[(query.obs["batch"] == "donor_b").to_numpy()][0])
    gap = (bias[0, stim_code, genes] - bias[0, 1 - stim_code, genes]).numpy()
    std = reference.module.normalizer.std[genes].numpy()
    assert np.median(gap * std) > 1.0  # log units, as in the reference's own batches
    # new batches' conditioning starts at the reference batches' average
    rows = q.module.network.batch_context.batch.weight.detach().clone()
    reference_rows = reference.module.network.batch_context.batch.weight.detach()
    torch.testing.assert_close(rows, reference_rows.mean(0, keepdim=True).expand_as(rows))
    latent_weight = q.module.network.batch_context.latent.weight.detach().clone()
    # frozen with the backbone: training the query leaves the reference genes' bias and
    # the conditioning's shared weights, and trains the new batches' rows
    q.train(max_epochs=1, batch_size=64, warmup_steps=1, enable_progress_bar=False)
    torch.testing.assert_close(q.module.network.batch_output_bias.detach(), bias)
    torch.testing.assert_close(q.module.network.batch_context.latent.weight, latent_weight)
    assert not torch.equal(q.module.network.batch_context.batch.weight.detach(), rows)
    # a query of one batch has nothing to condition on: no bias, no conditioning
    single = adata[:100].copy()
    single.obs["batch"] = "donor_z"
    q1 = ExceiverModel.load_query_data(single, reference)
    assert q1.module.network.batch_output_bias is None and q1.module.network.batch_context is None
    assert np.isfinite(q1.get_latent_representation()).all()
    # the reference's own batches keep the reference's trained bias
    same = ExceiverModel.load_query_data(adata[:300].copy(), reference)
    torch.testing.assert_close(
        same.module.network.batch_output_bias, reference.module.network.batch_output_bias
    )
    torch.testing.assert_close(
        same.module.network.batch_context.batch.weight,
        reference.module.network.batch_context.batch.weight,
    )
