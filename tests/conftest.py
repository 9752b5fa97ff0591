import numpy as np
import pytest
import scvi
import torch
from scipy import sparse

import scexceiver


@pytest.fixture(scope="session")
def pbmc():
    """The bundled PBMC 3k counts (real data)."""
    return scexceiver.datasets.pbmc3k()


@pytest.fixture(scope="session")
def pbmc_small(pbmc):
    """600 real PBMC cells on the 3,000 most detected genes (fast CPU tests)."""
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(pbmc.n_obs, 600, replace=False))
    detected = np.asarray((pbmc.X > 0).sum(0)).ravel()
    genes = np.sort(np.argsort(-detected)[:3000])
    return pbmc[cells, genes].copy()


@pytest.fixture(scope="session")
def trained(pbmc):
    """A default-preset model trained briefly on all of PBMC 3k, shared by several tests."""
    scvi.settings.seed = 0
    torch.set_num_threads(2)
    adata = pbmc.copy()
    scexceiver.ExceiverModel.setup_anndata(adata)
    model = scexceiver.ExceiverModel(adata)
    model.train(max_epochs=12, early_stopping=False, check_val_every_n_epoch=1)
    return model, adata


@pytest.fixture(scope="session")
def shifted(pbmc_small):
    """Real cells in two batches; in "stim" 150 detected genes carry 6x their counts.

    A level shift of whole genes in one batch, as a stimulation response or a
    chemistry's capture bias gives: which genes are detected does not change.
    """
    rng = np.random.default_rng(0)
    adata = pbmc_small.copy()
    stim = rng.random(adata.n_obs) < 0.5
    detected = np.asarray((adata.X > 0).mean(0)).ravel()
    genes = rng.choice(np.flatnonzero(detected > 0.2), 150, replace=False)
    factor = np.ones(adata.n_vars)
    factor[genes] = 6.0
    x = adata.X.toarray()
    x[stim] = x[stim] * factor
    adata.X = sparse.csr_matrix(x.astype(np.float32))
    adata.obs["batch"] = np.where(stim, "stim", "ctrl")
    return adata, genes


@pytest.fixture(scope="session")
def shifted_runs(shifted):
    """Batch configurations trained 15 epochs each on the ``shifted`` cells.

    "default batch options" is the default without its neighbour loss (which
    ``tests/test_neighbours.py`` trains and compares with it).

    Per name: the ``model``, its ``data``, ``embedding``, ``mixing`` (kNN batch entropy,
    1 = as mixed as chance) and validation ``masked_mse``.
    """
    adata, _ = shifted
    small = {"n_latents": 8, "dim": 32, "n_layers": 1, "ff_dim": 64, "head_hidden": 32}
    off = {"batch_standardise": False, "batch_output_bias": False, "batch_context": False}
    configs = {
        "no batch options": off,
        "batch_standardise": off | {"batch_standardise": True},
        "batch_output_bias": off | {"batch_output_bias": True},
        "integration": {"preset": "integration"},
        "default batch options": {"neighbour_preservation": 0.0},
    }
    runs = {}
    for name, kwargs in configs.items():
        data = adata.copy()
        scexceiver.ExceiverModel.setup_anndata(data, batch_key="batch")
        scvi.settings.seed = 0
        model = scexceiver.ExceiverModel(data, **kwargs, **small)
        model.train(max_epochs=15, batch_size=64, early_stopping=False, enable_progress_bar=False)
        embedding = model.get_latent_representation()
        error = model.get_reconstruction_error(indices=model.validation_indices)
        runs[name] = {
            "model": model,
            "data": data,
            "embedding": embedding,
            "mixing": scexceiver.tl.batch_mixing(embedding, data.obs["batch"].to_numpy()),
            "masked_mse": error["masked_mse"],
        }
    return runs


def _two_batch_module(adata, **overrides):
    """A small default-preset module fitted on ``adata`` as two interleaved batches."""
    from scexceiver.data import gene_statistics
    from scexceiver.model._presets import resolve_preset
    from scexceiver.module import ExceiverModule

    small = {"n_latents": 8, "dim": 32, "n_layers": 1, "ff_dim": 64, "head_hidden": 32}
    torch.manual_seed(0)
    module = ExceiverModule(adata.n_vars, 2, **resolve_preset("default", **overrides, **small))
    stats = gene_statistics(adata.X)
    module.fit_statistics(stats, [gene_statistics(adata.X[0::2]), gene_statistics(adata.X[1::2])])
    return module


@pytest.fixture
def two_batch_module():
    """Builder of a small default-preset module fitted on an AnnData as two batches."""
    return _two_batch_module


@pytest.fixture
def training_only_loss(pbmc_small):
    """Check that an opt-in loss acts in training only, through its weight alone.

    Called with the module argument, its weight and the loss's output/metric name, it
    compares a module with the weight to the same module without it (same weights, same
    draws, 32 cells in two batches): in evaluation neither has the loss and both report
    the same loss; in training the reported loss is still the reconstruction error, the
    metric is the loss, and the gradient is the plain module's plus weight times the
    loss's. Returns the loss.
    """
    from scvi import REGISTRY_KEYS

    from scexceiver.data import tokenize_counts

    def check(argument: str, weight: float, name: str) -> torch.Tensor:
        tokens = tokenize_counts(pbmc_small.X[:32])
        tokens[REGISTRY_KEYS.BATCH_KEY] = (torch.arange(32) % 2).view(-1, 1)
        # the other losses off and one gene table, so the two differ in this loss alone
        alone = {"neighbour_preservation": 0.0, "tie_gene_embeddings": True}
        plain = _two_batch_module(pbmc_small, **alone | {argument: 0.0})
        weighted = _two_batch_module(pbmc_small, **alone | {argument: weight})
        weighted.load_state_dict(plain.state_dict())

        def run(module):
            generator = torch.Generator().manual_seed(1)
            return module(tokens, inference_kwargs={"generator": generator})

        plain.eval()
        weighted.eval()
        with torch.no_grad():
            assert run(weighted)[0][name] is None
            torch.testing.assert_close(run(weighted)[2].loss, run(plain)[2].loss)
        plain.train()
        weighted.train()
        inference, _, out = run(weighted)
        plain_inference, _, reference = run(plain)
        extra = inference[name]
        assert plain_inference[name] is None
        torch.testing.assert_close(out.loss, reference.loss)
        torch.testing.assert_close(out.extra_metrics[name], extra.detach())
        latents = weighted.network.latents
        total = torch.autograd.grad(out.loss, latents, retain_graph=True)[0]
        rec = torch.autograd.grad(reference.loss, plain.network.latents)[0]
        from_extra = torch.autograd.grad(extra, latents, retain_graph=True)[0]
        assert from_extra.abs().max() > 0
        torch.testing.assert_close(total, rec + weight * from_extra)
        return extra.detach()

    return check
