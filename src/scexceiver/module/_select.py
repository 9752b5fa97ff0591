"""Choosing which of a cell's expressed genes become encoder tokens."""

from __future__ import annotations

import torch

# multiplier of a multiplicative hash (Knuth) giving genes a fixed pseudo-random order
_HASH = 2654435761


def keep_top_genes(
    gene_idx: torch.Tensor, counts: torch.Tensor, token_mask: torch.Tensor, max_genes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each cell's ``max_genes`` highest-count tokens, in their original order.

    Cells with at most ``max_genes`` tokens keep all of them. Ties (common: most genes
    of a cell have a count of 1) are broken by a fixed pseudo-random order of the genes,
    so a cell always gives the same tokens and no range of gene indices is favoured.

    Parameters
    ----------
    gene_idx, counts, token_mask
        (b, n) padded tokens, gene indices sorted per cell with padding last.
    max_genes
        Largest number of tokens per cell.

    Returns
    -------
    tuple
        ``gene_idx``, ``counts`` and ``token_mask`` of shape (b, min(n, max_genes)).
    """
    if gene_idx.shape[1] <= max_genes:
        return gene_idx, counts, token_mask
    priority = (gene_idx * _HASH) % (2**31)
    by_priority = priority.argsort(dim=1, stable=True)
    ranked = counts.masked_fill(~token_mask, -1.0).gather(1, by_priority)
    by_count = ranked.argsort(dim=1, descending=True, stable=True)
    keep = by_priority.gather(1, by_count[:, :max_genes]).sort(dim=1).values
    return gene_idx.gather(1, keep), counts.gather(1, keep), token_mask.gather(1, keep)
