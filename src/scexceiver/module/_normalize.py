"""Expression normalisation from raw counts, with per-gene statistics stored as buffers."""

from __future__ import annotations

import torch
from torch import nn


class ExpressionNormalizer(nn.Module):
    """Processed value of raw counts: CP10k, log1p, per-gene z-score, clip above, plus one.

    ``value = min((log1p(1e4 * count / library) - mean_g) / std_g, clip) + 1``, so a gene at
    its average level has value 1. Statistics are fitted on training cells and stored as
    buffers, so a saved model normalises new data identically.

    Parameters
    ----------
    n_genes
        Size of the gene vocabulary; buffers carry one extra neutral entry for padding.
    target_sum
        Counts per cell after library-size scaling.
    clip
        Upper clip of the z-score.
    n_batch
        Number of batches with their own per-gene statistics (``0``: none). With them,
        ``forward`` given batch codes standardises each cell by its batch's mean and
        std instead of the pooled ones (see :meth:`set_batch_statistics`).
    """

    def __init__(
        self, n_genes: int, *, target_sum: float = 1e4, clip: float = 10.0, n_batch: int = 0
    ) -> None:
        super().__init__()
        self.target_sum = target_sum
        self.clip = clip
        self.register_buffer("mean", torch.zeros(n_genes + 1))
        self.register_buffer("std", torch.ones(n_genes + 1))
        # per-batch statistics only when asked for, so other models' state dicts keep
        # their keys
        self.register_buffer("batch_mean", torch.zeros(n_batch, n_genes + 1) if n_batch else None)
        self.register_buffer("batch_std", torch.ones(n_batch, n_genes + 1) if n_batch else None)
        self.register_buffer("log_library_mean", torch.tensor(0.0))
        self.register_buffer("log_library_std", torch.tensor(1.0))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def set_statistics(
        self,
        mean: torch.Tensor,
        std: torch.Tensor,
        log_library_mean: float = 0.0,
        log_library_std: float = 1.0,
    ) -> None:
        """Store per-gene mean and std of ``log1p(CP10k)`` (zero std is treated as 1).

        ``log_library_*`` standardise ``log1p`` of library sizes (see :meth:`library`).
        """
        self.log_library_mean.fill_(log_library_mean)
        self.log_library_std.fill_(log_library_std)
        n = self.mean.shape[0] - 1
        self.mean[:n] = torch.as_tensor(mean, dtype=self.mean.dtype)
        self.std[:n] = torch.as_tensor(std, dtype=self.std.dtype).masked_fill(
            torch.as_tensor(std) <= 0, 1.0
        )
        self.fitted.fill_(True)

    @torch.no_grad()
    def set_batch_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-batch, per-gene mean and std (n_batch, n_genes) of ``log1p(CP10k)``.

        Zero std is treated as 1. The padding entry stays neutral.
        """
        if self.batch_mean is None:
            raise ValueError("This normalizer has no per-batch statistics (n_batch=0).")
        n = self.batch_mean.shape[1] - 1
        std = torch.as_tensor(std, dtype=self.batch_std.dtype)
        self.batch_mean[:, :n] = torch.as_tensor(mean, dtype=self.batch_mean.dtype)
        self.batch_std[:, :n] = std.masked_fill(std <= 0, 1.0)

    def library(self, library_size: torch.Tensor) -> torch.Tensor:
        """Standardised log library size (b,) of library sizes (b,)."""
        return (torch.log1p(library_size) - self.log_library_mean) / self.log_library_std

    def forward(
        self,
        counts: torch.Tensor,
        library_size: torch.Tensor,
        gene_idx: torch.Tensor,
        batch_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Processed values of ``counts`` (b, n) for genes ``gene_idx`` (b, n).

        ``library_size`` (b,) is each cell's total count over the whole panel. Given
        ``batch_index`` (b, 1), each cell is standardised by its batch's statistics.
        """
        scale = self.target_sum / library_size.clamp(min=1.0).unsqueeze(-1)
        return self.standardise(torch.log1p(counts * scale), gene_idx, batch_index)

    def standardise(
        self,
        log_values: torch.Tensor,
        gene_idx: torch.Tensor,
        batch_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Processed values of ``log1p(CP10k)`` values (b, n) of genes ``gene_idx`` (b, n).

        Given ``batch_index`` (b, 1), each cell is standardised by its batch's statistics.
        """
        if batch_index is None or self.batch_mean is None:
            mean, std = self.mean[gene_idx], self.std[gene_idx]
        else:
            rows = batch_index.view(-1, 1).long()
            mean, std = self.batch_mean[rows, gene_idx], self.batch_std[rows, gene_idx]
        z = (log_values - mean) / std
        return z.clamp(max=self.clip) + 1.0

    def log_values(self, values: torch.Tensor, gene_idx: torch.Tensor) -> torch.Tensor:
        """``log1p(CP10k)`` values of processed values (b, n) under the pooled statistics.

        The inverse of :meth:`forward` without batch codes, up to the clip.
        """
        return (values - 1.0) * self.std[gene_idx] + self.mean[gene_idx]
