"""Gaussian latents with a KL penalty to a standard normal prior (an information bottleneck)."""

from __future__ import annotations

import torch
from torch import nn


class GaussianLatents(nn.Module):
    """Treat each latent vector as the mean of a diagonal Gaussian and sample from it.

    The encoder's latents become posterior means; a linear map of each latent gives its
    log-variance. In training the decoder reads a sample ``mean + std * noise``, and the
    KL divergence to ``N(0, I)`` is the price of every dimension the decoder relies on,
    as in a VAE (scVI's encoder). Information the decoder receives anyway (the batch and
    library size it is conditioned on) is then cheaper to leave out of the latents. In
    evaluation mode the mean is returned unchanged, so embeddings are deterministic.

    Parameters
    ----------
    dim
        Width of each latent vector.
    init_log_var
        Initial log-variance (bias of the map, whose weight starts at zero): small, so
        training starts close to deterministic latents.
    """

    def __init__(self, dim: int, init_log_var: float = -4.0) -> None:
        super().__init__()
        self.log_var = nn.Linear(dim, dim)
        nn.init.zeros_(self.log_var.weight)
        nn.init.constant_(self.log_var.bias, init_log_var)

    def forward(
        self, mean: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample latents (b, K, dim) and each cell's KL divergence per latent dimension (b,).

        Parameters
        ----------
        mean
            Posterior means (b, K, dim), the encoder's latents.
        generator
            Random generator of the noise (training only).

        Returns
        -------
        tuple of torch.Tensor
            The sample in training mode (the mean otherwise), and ``KL(q || N(0, I))``
            averaged over the ``K * dim`` dimensions of each cell.
        """
        log_var = self.log_var(mean).float().clamp(-20.0, 10.0)
        mean32 = mean.float()
        kl = 0.5 * (mean32.square() + log_var.exp() - log_var - 1.0)
        kl = kl.flatten(1).mean(1)
        if not self.training:
            return mean, kl
        noise = torch.randn(
            mean.shape, generator=generator, device=mean.device, dtype=torch.float32
        )
        sample = mean32 + (0.5 * log_var).exp() * noise
        return sample.to(mean.dtype), kl
