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
        "default": {},
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
