"""Training plan with the paper's optimiser and a fixed validation mask."""

from __future__ import annotations

import numpy as np
import torch
from scvi import settings
from scvi.module.base import BaseModuleClass, LossOutput
from scvi.train import TrainingPlan


class ExceiverTrainingPlan(TrainingPlan):
    """Masked-expression training: Adam with linear warmup, fixed-mask validation.

    scvi-tools' default plan is tuned for VAEs (Adam ``eps=0.01``, KL warmup, ELBO
    metrics); this one trains a deterministic transformer with the released Exceiver's
    optimiser: Adam (``eps=1e-8``), linear warmup of the learning rate over
    ``warmup_steps`` optimiser steps, then constant.

    A loss that is NaN or infinite raises :class:`FloatingPointError` before the
    backward pass, so training stops with a message instead of filling the weights
    (and every later embedding) with NaN.

    Validation draws its masks from a generator seeded by ``validation_seed`` and the
    batch index, so the same genes are hidden every epoch and the validation loss is
    comparable across epochs (and not 0, as it would be if masking followed
    ``self.training``). Training masks come from a generator seeded by ``(seed, rank,
    global step)``: runs with the same seed draw the same masks, a resumed run draws
    the masks the uninterrupted run would have drawn, and the ranks of a multi-device
    run draw different masks. Checkpoints also carry torch's global RNG state (which
    drives the shuffling of the training cells), restored on resume.

    Parameters
    ----------
    module
        An :class:`~scexceiver.module.ExceiverModule`.
    lr
        Peak learning rate.
    weight_decay
        Adam weight decay (L2).
    eps
        Adam epsilon.
    warmup_steps
        Optimiser steps of linear warmup.
    validation_seed
        Seed of the fixed validation masks.
    seed
        Seed of the training masks; ``None`` uses ``scvi.settings.seed``.
    **kwargs
        Passed to :class:`~scvi.train.TrainingPlan`.
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        lr: float = 3e-4,
        weight_decay: float = 1e-5,
        eps: float = 1e-8,
        warmup_steps: int = 500,
        validation_seed: int = 0,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(module, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.warmup_steps = warmup_steps
        self.validation_seed = validation_seed
        self.seed = (settings.seed or 0) if seed is None else seed

    def forward(self, *args, **kwargs):
        """Run the module (no scvi-tools VAE arguments)."""
        return self.module(*args, **kwargs)

    def _log_loss(self, loss_output: LossOutput, mode: str, batch_size: int) -> None:
        metrics = {
            f"{mode}_loss": loss_output.loss,
            f"masked_mse_{mode}": loss_output.extra_metrics["masked_mse"],
        }
        for name in ("batch_adversary_ce", "latent_kl", "cycle_gap", "neighbour_loss"):
            if name in loss_output.extra_metrics:
                metrics[f"{name}_{mode}"] = loss_output.extra_metrics[name]
        self.log_dict(
            metrics,
            on_step=False,
            on_epoch=True,
            prog_bar=mode == "train",
            batch_size=batch_size,
            sync_dist=self.use_sync_dist,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Masked-expression loss on one minibatch with a fresh random mask."""
        generator = self.training_generator(self.global_step, self.global_rank)
        _, _, loss_output = self.forward(batch, inference_kwargs={"generator": generator})
        self._check_finite(loss_output.loss, "training", batch_idx)
        self._log_loss(loss_output, "train", loss_output.n_obs_minibatch)
        return loss_output.loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Loss on one validation minibatch with the fixed mask of that batch."""
        generator = self.validation_generator(batch_idx)
        _, _, loss_output = self.forward(batch, inference_kwargs={"generator": generator})
        self._check_finite(loss_output.loss, "validation", batch_idx)
        self._log_loss(loss_output, "validation", loss_output.n_obs_minibatch)

    def _check_finite(self, loss: torch.Tensor, stage: str, batch_idx: int) -> None:
        """Stop before a non-finite loss reaches the weights, naming the likely causes."""
        if bool(torch.isfinite(loss)):
            return
        raise FloatingPointError(
            f"The {stage} loss is {float(loss.detach())} at epoch {self.current_epoch}, batch "
            f"{batch_idx}; training stopped before this step changed the weights. Likely "
            "causes: a learning rate too high (lower lr=), half precision overflowing "
            "(precision='32-true'), or weights that are already not finite (a diverged "
            "earlier run: retrain from scratch or load a saved model)."
        )

    def validation_generator(self, batch_idx: int) -> torch.Generator:
        """Generator of the fixed masks of validation batch ``batch_idx``."""
        device = next(self.module.parameters()).device
        return torch.Generator(device=device).manual_seed(self.validation_seed + batch_idx)

    def training_generator(self, step: int, rank: int = 0) -> torch.Generator:
        """Generator of the training masks of optimiser step ``step`` on rank ``rank``."""
        device = next(self.module.parameters()).device
        state = np.random.SeedSequence([self.seed % 2**32, rank, step]).generate_state(2)
        return torch.Generator(device=device).manual_seed(int(state[0]) << 32 | int(state[1]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store torch's global RNG state (it drives the shuffling of training cells)."""
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore torch's global RNG state stored by :meth:`on_save_checkpoint`."""
        if "torch_rng_state" in checkpoint:
            torch.set_rng_state(checkpoint["torch_rng_state"])

    def configure_optimizers(self) -> dict:
        """Adam over trainable parameters with linear warmup, then a constant rate."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay
        )
        warmup = max(self.warmup_steps, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / warmup)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
