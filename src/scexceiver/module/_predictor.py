"""Exceiver with a prediction query: masked expression plus a cell-level target."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch import nn

from ._module import ExceiverModule


class ExceiverPredictorModule(ExceiverModule):
    """:class:`ExceiverModule` with the paper's classifier: one extra learned decoder query.

    The query cross-attends to the latents through the decoder's cross-attention (as the
    gene queries do), and a head ``LayerNorm -> Linear(dim, C) -> GELU -> Linear(C, C)``
    turns its output into class logits (for regression, one value through a hidden
    width of ``dim``). The loss is the masked-expression MSE plus ``ce_weight`` times the
    cross-entropy (regression: MSE on the standardised target) over labelled cells only.

    Parameters
    ----------
    n_genes, n_batch
        As :class:`ExceiverModule`.
    n_classes
        Number of classes; labels equal to ``n_classes`` (scvi-tools' unlabelled category,
        registered last) do not enter the cross-entropy.
    task
        ``"classification"`` or ``"regression"`` (a continuous target; NaN = unlabelled).
    ce_weight
        Weight of the prediction loss against the masked-expression MSE.
    **kwargs
        Passed to :class:`ExceiverModule`.
    """

    def __init__(
        self,
        n_genes: int,
        n_batch: int = 0,
        *,
        n_classes: int,
        task: Literal["classification", "regression"] = "classification",
        ce_weight: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(n_genes, n_batch, **kwargs)
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}.")
        self.task = task
        self.n_classes = n_classes
        self.ce_weight = ce_weight
        dim = self.network.latents.shape[1]
        n_out, hidden = (n_classes, n_classes) if task == "classification" else (1, dim)
        self.prediction_query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.prediction_head = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, n_out)
        )
        self.register_buffer("class_weights", torch.ones(max(n_classes, 1)))
        self.register_buffer("target_mean", torch.tensor(0.0))
        self.register_buffer("target_std", torch.tensor(1.0))

    def predict_from_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Class logits (b, C), or the standardised target (b,) for regression."""
        query = self.prediction_query.expand(latents.shape[0], -1, -1)
        decoded, _ = self.network.decoder_cross_attention(query, latents)
        out = self.prediction_head(decoded[:, 0])
        return out if self.task == "classification" else out[:, 0]

    @auto_move_data
    def generative(self, latents: torch.Tensor, query_idx: torch.Tensor | None, **kwargs) -> dict:
        """Gene predictions of :class:`ExceiverModule` plus the cell-level ``label_output``."""
        out = super().generative(latents, query_idx, **kwargs)
        out["label_output"] = self.predict_from_latents(latents)
        return out

    def loss(self, tensors: dict, inference_outputs: dict, generative_outputs: dict) -> LossOutput:
        """Masked-expression MSE plus ``ce_weight`` x the prediction loss on labelled cells."""
        base = super().loss(tensors, inference_outputs, generative_outputs)
        output = generative_outputs["label_output"].float()
        target = tensors[REGISTRY_KEYS.LABELS_KEY].view(-1).to(output.device)
        if self.task == "classification":
            labelled = target < self.n_classes
            prediction_loss = (
                F.cross_entropy(
                    output[labelled], target[labelled].long(), weight=self.class_weights
                )
                if labelled.any()
                else output.sum() * 0.0
            )
            correct = (output.argmax(1) == target)[labelled].float().sum()
        else:
            labelled = ~torch.isnan(target)
            z = (target[labelled].float() - self.target_mean) / self.target_std
            prediction_loss = (
                F.mse_loss(output[labelled], z) if labelled.any() else output.sum() * 0.0
            )
            correct = torch.zeros((), device=output.device)
        return LossOutput(
            loss=base.loss + self.ce_weight * prediction_loss,
            reconstruction_loss=base.reconstruction_loss,
            n_obs_minibatch=base.n_obs_minibatch,
            extra_metrics={
                **base.extra_metrics,
                "prediction_loss": prediction_loss.detach(),
                "n_labelled": labelled.sum().detach().float(),
                "n_correct": correct.detach(),
            },
        )
