"""Batch-conditioned latents for the decoder (pure torch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BatchConditioning(nn.Module):
    """What the decoder reads: each latent shifted by an MLP of the latent and the batch.

    ``latent + W2 GELU(W1 latent + B[batch] + b1)``, with ``W2`` started at zero so the
    decoder first reads the encoder's latents unchanged. This is a one-hidden-layer MLP
    of the latent concatenated with a one-hot batch code (``B`` holds the batch columns of
    ``W1``), as scVI's decoder reads its latent together with the batch. The decoder can
    then express batch effects that differ between cell states (a stimulation response
    stronger in one cell type), which an embedding added to every gene query cannot, so
    the encoder need not keep them in the latents.

    Parameters
    ----------
    dim
        Width of the latents.
    n_batch
        Number of batches.
    hidden
        Width of the hidden layer.
    """

    def __init__(self, dim: int, n_batch: int, hidden: int) -> None:
        super().__init__()
        self.latent = nn.Linear(dim, hidden)
        self.batch = nn.Embedding(n_batch, hidden)
        bound = 1 / math.sqrt(dim + n_batch)  # as nn.Linear's init of the one-hot columns
        nn.init.uniform_(self.batch.weight, -bound, bound)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, latents: torch.Tensor, batch_index: torch.Tensor) -> torch.Tensor:
        """Latents (b, K, dim) of cells in batches ``batch_index`` (b, 1) -> (b, K, dim)."""
        hidden = self.latent(latents) + self.batch(batch_index.view(-1).long()).unsqueeze(1)
        return latents + self.out(F.gelu(hidden))
