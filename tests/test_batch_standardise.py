"""Per-batch standardisation of the encoder's input (``batch_standardise=True``)."""

import anndata
import numpy as np
import pytest
import scvi
import torch

from scexceiver import ExceiverModel
from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.model._presets import TRAINING, resolve_preset
from scexceiver.module import ExpressionNormalizer, batch_standardisation

SMALL = {"n_latents": 8, "dim": 32, "n_layers": 1, "ff_dim": 64, "head_hidden": 32}


def _shrunk_mean(own, pooled_mean: np.ndarray | float) -> np.ndarray:
    """A batch's gene means weighted with the pooled ones, 10 cells' worth of prior."""
    weight = own.n_cells / (own.n_cells + 10)
    return weight * own.mean + (1 - weight) * pooled_mean


def test_per_batch_values_use_each_cells_own_batch(pbmc_small):
    x = pbmc_small.X[:40]
    batch = np.arange(40) % 2
    normalizer = ExpressionNormalizer(pbmc_small.n_vars, n_batch=2)
    pooled = gene_statistics(x)
    per_batch = [gene_statistics(x, np.flatnonzero(batch == b)) for b in (0, 1)]
    normalizer.set_statistics(torch.from_numpy(pooled.mean), torch.from_numpy(pooled.std))
    normalizer.set_batch_statistics(
        torch.from_numpy(np.stack([s.mean for s in per_batch])),
        torch.from_numpy(np.stack([s.std for s in per_batch])),
    )
    tokens = tokenize_counts(x)
    index = torch.as_tensor(batch).view(-1, 1)
    values = normalizer(tokens["counts"], tokens["library_size"], tokens["gene_idx"], index)
    mask = tokens["token_mask"].numpy()
    dense = x.toarray().astype(np.float64)
    logged = np.log1p(dense / dense.sum(1, keepdims=True) * 1e4)
    mean = np.stack([per_batch[b].mean for b in batch])
    std = np.stack([per_batch[b].std for b in batch])
    expected = np.minimum((logged - mean) / std, 10) + 1
    rows, _ = np.nonzero(mask)
    cols = tokens["gene_idx"].numpy()[mask]
    np.testing.assert_allclose(values.numpy()[mask], expected[rows, cols], rtol=1e-4, atol=1e-5)
    # without batch codes, the pooled statistics
    plain = normalizer(tokens["counts"], tokens["library_size"], tokens["gene_idx"])
    expected = np.minimum((logged - pooled.mean) / pooled.std, 10) + 1
    np.testing.assert_allclose(plain.numpy()[mask], expected[rows, cols], rtol=1e-4, atol=1e-5)


def test_small_batches_statistics_shrink_toward_the_pooled_ones(pbmc_small):
    x = pbmc_small.X
    pooled = gene_statistics(x)
    sizes = {"tiny": 5, "large": 400}
    own = {k: gene_statistics(x, np.arange(n)) for k, n in sizes.items()}
    mean, std = batch_standardisation(pooled, list(own.values()))
    assert mean.shape == std.shape == (2, pbmc_small.n_vars)
    # a batch of 5 cells sits a third of the way to its own mean (5 / 15), one of 400
    # cells 98 % of the way
    for row, (name, n) in enumerate(sizes.items()):
        differs = np.abs(own[name].mean - pooled.mean) > 0.05
        moved = (mean[row].numpy() - pooled.mean)[differs] / (own[name].mean - pooled.mean)[
            differs
        ]
        np.testing.assert_allclose(moved, n / (n + 10), rtol=1e-4)
        # and its variance the same fraction of the way to its own
        var = std[row].numpy() ** 2
        own_var = own[name].std ** 2
        differs = np.abs(own_var - pooled.std**2) > 0.05
        moved = (var - pooled.std**2)[differs] / (own_var - pooled.std**2)[differs]
        np.testing.assert_allclose(moved, n / (n + 10), rtol=1e-3)
    # prior_cells=0: each batch's own statistics
    raw_mean, raw_std = batch_standardisation(pooled, list(own.values()), prior_cells=0)
    np.testing.assert_allclose(raw_mean[0], own["tiny"].mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(raw_std[1], own["large"].std, rtol=1e-5)


def test_training_fits_each_batchs_statistics_and_removes_the_shift(shifted):
    adata, genes = shifted
    adata = adata.copy()
    ExceiverModel.setup_anndata(adata, batch_key="batch")
    model = ExceiverModel(adata, batch_standardise=True, **SMALL)
    model.train(max_epochs=1, batch_size=64, warmup_steps=1, enable_progress_bar=False)
    normalizer = model.module.normalizer
    codes = adata.obs["_scvi_batch"].to_numpy()
    train = np.sort(model.train_indices)
    # pooled statistics (targets and loss weights) are unchanged by the option
    pooled = gene_statistics(adata.X, train)
    for b in (0, 1):
        own = gene_statistics(adata.X, train[codes[train] == b])
        w = own.n_cells / (own.n_cells + 10)
        mean = w * own.mean + (1 - w) * pooled.mean
        std = np.sqrt(w * own.std**2 + (1 - w) * pooled.std**2)
        np.testing.assert_allclose(normalizer.batch_mean[b, :-1], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(normalizer.batch_std[b, :-1], std, rtol=1e-5)
    np.testing.assert_allclose(normalizer.mean[:-1], pooled.mean, rtol=1e-5)
    # the shifted genes' input values: apart between batches when pooled, level per batch
    tokens = tokenize_counts(adata.X)
    index = torch.as_tensor(codes).view(-1, 1)
    is_shifted = torch.isin(tokens["gene_idx"], torch.as_tensor(genes)) & tokens["token_mask"]

    def gap(values: torch.Tensor) -> float:
        means = [values[is_shifted & (index == b)].mean().item() for b in (0, 1)]
        return abs(means[1] - means[0])

    args = (tokens["counts"], tokens["library_size"], tokens["gene_idx"])
    assert gap(normalizer(*args)) > 1.0
    assert gap(normalizer(*args, index)) < 0.1


def test_standardising_per_batch_mixes_a_level_shifted_batch(shifted_runs, tmp_path):
    mixing = {name: run["mixing"] for name, run in shifted_runs.items()}
    # measured: none 0.54 to 0.68, per batch 0.96, integration 0.95 (1: as mixed as chance)
    assert mixing["batch_standardise"] > 0.85
    assert mixing["batch_standardise"] > mixing["no batch options"] + 0.15
    assert mixing["integration"] > mixing["no batch options"] + 0.15
    model, data = shifted_runs["integration"]["model"], shifted_runs["integration"]["data"]
    embedding = shifted_runs["integration"]["embedding"]
    # the preset is saved by name and its module configuration with it
    model.save(tmp_path / "integration")
    loaded = ExceiverModel.load(tmp_path / "integration", adata=data)
    assert loaded.preset == "integration" and loaded.module.batch_standardise
    # with two batches the preset keeps the default's neighbour loss and untied tables
    assert loaded.module.neighbour_preservation == 3
    assert loaded.module.network.encoder_gene_embedding is not None
    np.testing.assert_array_equal(loaded.get_latent_representation(), embedding)


def test_the_integration_preset_trades_the_decoders_batch_options_for_a_large_start():
    # and keeps the default's neighbour loss (None: on with two or more batches)
    default = resolve_preset("default")
    integration = resolve_preset("integration")
    changed = {k: integration[k] for k in default if default[k] != integration[k]}
    assert changed == {
        "value_encoding": "scale",
        "batch_standardise": True,
        "batch_output_bias": False,
        "batch_context": False,
        "embedding_std": None,
        "input_thinning": 0.0,
    }
    assert TRAINING["integration"] == TRAINING["default"]


def test_every_batch_needs_training_cells(pbmc_small):
    adata = pbmc_small[:100, :300].copy()
    adata.obs["batch"] = ["rare" if i == 0 else "common" for i in range(adata.n_obs)]
    ExceiverModel.setup_anndata(adata, batch_key="batch")
    model = ExceiverModel(adata, **SMALL)  # the default: per batch with two batches
    assert model.module.batch_standardise
    # the single "rare" cell lands in validation, so no training cell of that batch
    split = {"external_indexing": [np.arange(1, adata.n_obs), np.array([0]), np.array([], int)]}
    with pytest.raises(ValueError, match=r"none of \['rare'\] is among them"):
        model.train(max_epochs=1, datasplitter_kwargs=split, enable_progress_bar=False)
    assert not model.module.is_fitted


def test_one_batch_is_standardised_by_its_own_statistics(pbmc_small):
    adata = pbmc_small[:200, :300].copy()
    ExceiverModel.setup_anndata(adata)
    scvi.settings.seed = 0
    model = ExceiverModel(adata, batch_standardise=True, **SMALL)
    model.train(max_epochs=1, batch_size=50, warmup_steps=1, enable_progress_bar=False)
    normalizer = model.module.normalizer
    assert normalizer.batch_mean.shape == (1, 301)
    torch.testing.assert_close(normalizer.batch_mean[0], normalizer.mean)
    # a query of other cells (one batch again) gets the query's own levels
    query = pbmc_small[200:400, :300].copy()
    q = ExceiverModel.load_query_data(query, model)
    expected = _shrunk_mean(gene_statistics(query.X), normalizer.mean[:-1].numpy())
    np.testing.assert_allclose(q.module.normalizer.batch_mean[0, :-1], expected, rtol=1e-5)
    torch.testing.assert_close(q.module.normalizer.mean, normalizer.mean)


def test_saved_statistics_and_query_batches_with_their_own(shifted, tmp_path):
    adata, _ = shifted
    reference_data = adata.copy()
    ExceiverModel.setup_anndata(reference_data, batch_key="batch")
    scvi.settings.seed = 0
    reference = ExceiverModel(reference_data, batch_standardise=True, **SMALL)
    reference.train(max_epochs=2, batch_size=64, warmup_steps=1, enable_progress_bar=False)
    reference.save(tmp_path / "ref")
    loaded = ExceiverModel.load(tmp_path / "ref", adata=reference_data)
    assert loaded.module.batch_standardise
    torch.testing.assert_close(
        loaded.module.normalizer.batch_std, reference.module.normalizer.batch_std
    )
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), reference.get_latent_representation()
    )
    # new batches
    query = adata[:200].copy()
    query.obs["batch"] = np.where(np.arange(200) % 2, "donor_b", "donor_c")
    q = ExceiverModel.load_query_data(query, reference)
    codes = query.obs["_scvi_batch"].to_numpy()
    for b in (0, 1):
        own = gene_statistics(query.X, np.flatnonzero(codes == b))
        expected = _shrunk_mean(own, reference.module.normalizer.mean[:-1].numpy())
        np.testing.assert_allclose(q.module.normalizer.batch_mean[b, :-1], expected, rtol=1e-5)
    assert q.get_latent_representation().shape == (200, SMALL["n_latents"] * SMALL["dim"])
    # the reference's batches with a new gene: reference rows kept, the new gene filled in
    same = adata[:200, :500].copy()
    extra = adata[:200, 500:501].copy()
    extra.var_names = ["NEW_GENE"]
    same = anndata.concat([same, extra], axis=1, merge="first")
    q = ExceiverModel.load_query_data(same, reference)
    n_ref = len(reference.gene_vocabulary_)
    kept = q.module.normalizer.batch_mean[:, :n_ref]
    torch.testing.assert_close(kept, reference.module.normalizer.batch_mean[:, :n_ref])
    codes = same.obs["_scvi_batch"].to_numpy()
    for b in (0, 1):
        own = gene_statistics(same.X, np.flatnonzero(codes == b))  # library: all genes
        expected = _shrunk_mean(own, q.module.normalizer.mean[n_ref].item())[-1]
        got = q.module.normalizer.batch_mean[b, n_ref].item()
        assert got == pytest.approx(float(expected), rel=1e-5)
