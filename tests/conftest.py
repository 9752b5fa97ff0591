import numpy as np
import pytest
import scvi
import torch

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
