import numpy as np
import scvi
import torch

import scexceiver
from scexceiver.train import ExceiverTrainingPlan


def test_optimiser_is_the_papers_with_linear_warmup(pbmc_small):
    adata = pbmc_small.copy()
    scexceiver.ExceiverModel.setup_anndata(adata)
    model = scexceiver.ExceiverModel(adata, preset="paper", n_layers=1)
    plan = ExceiverTrainingPlan(model.module, warmup_steps=4)
    config = plan.configure_optimizers()
    optimizer = config["optimizer"]
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert group["eps"] == 1e-8 and group["weight_decay"] == 1e-5
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    rates = []
    for _ in range(7):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(rates, [3e-4 * f for f in (0.25, 0.5, 0.75, 1, 1, 1, 1)])


def test_validation_loss_uses_a_fixed_nonzero_mask(pbmc_small):
    scvi.settings.seed = 0
    adata = pbmc_small.copy()
    scexceiver.ExceiverModel.setup_anndata(adata)
    model = scexceiver.ExceiverModel(adata)
    model.train(max_epochs=2, enable_progress_bar=False, check_val_every_n_epoch=1)
    logged = model.history["validation_loss"]["validation_loss"].astype(float)
    assert len(logged) == 2 and (logged > 0).all()
    plan = ExceiverTrainingPlan(model.module)
    loader = model._make_data_loader(adata, indices=model.validation_indices, batch_size=64)
    batch = next(iter(loader))
    model.module.eval()

    def loss(generator=None):
        _, _, out = plan.forward(batch, inference_kwargs={"generator": generator})
        return float(out.loss)

    fixed = loss(plan.validation_generator(0))
    assert fixed == loss(plan.validation_generator(0))  # the same genes every epoch
    assert fixed != loss(plan.validation_generator(1))
    assert fixed != loss()  # training draws fresh masks
