"""Masking for the self-supervised objective, drawn on the device."""

from __future__ import annotations

from typing import NamedTuple

import torch


class TokenDraw(NamedTuple):
    """Token positions chosen in one draw; ``*_valid`` marks real (non-filler) slots."""

    masked_pos: torch.Tensor
    masked_valid: torch.Tensor
    visible_pos: torch.Tensor
    visible_valid: torch.Tensor


def draw_masked_tokens(
    token_mask: torch.Tensor,
    n_mask: int,
    n_visible: int = 0,
    generator: torch.Generator | None = None,
) -> TokenDraw:
    """Draw, per cell, tokens to mask and visible tokens to query, without replacement.

    A cell masks ``min(n_mask, n_tokens // 2)`` of its tokens, so cells with few detected
    genes keep at least half of them visible; a cell with one token masks none. Up to
    ``n_visible`` further (unmasked) tokens are drawn as visible queries.

    Parameters
    ----------
    token_mask
        (b, n) boolean, ``True`` where a position holds an eligible token.
    n_mask
        Number of tokens to mask per cell.
    n_visible
        Number of visible tokens to draw per cell.
    generator
        Random generator on ``token_mask``'s device; ``None`` uses the global one.

    Returns
    -------
    TokenDraw
        Positions (b, n_mask) and (b, n_visible) into the token axis with validity
        masks.
    """
    b, n = token_mask.shape
    if n == 0:  # every cell of the minibatch is empty: nothing to mask or query
        none = torch.zeros((b, 0), dtype=torch.long, device=token_mask.device)
        return TokenDraw(none, none.bool(), none, none.bool())
    n_tokens = token_mask.sum(dim=1)
    n_masked = torch.minimum(n_tokens // 2, torch.full_like(n_tokens, n_mask))
    scores = torch.rand((b, n), generator=generator, device=token_mask.device)
    # eligible tokens sort first, in random order
    order = scores.masked_fill(~token_mask, 2.0).argsort(dim=1)
    slots = torch.arange(n_mask, device=token_mask.device)
    masked_pos = order.gather(1, slots.clamp(max=n - 1).expand(b, -1))
    masked_valid = slots < n_masked.unsqueeze(1)
    visible_slot = n_masked.unsqueeze(1) + torch.arange(n_visible, device=token_mask.device)
    visible_pos = order.gather(1, visible_slot.clamp(max=n - 1))
    visible_valid = visible_slot < n_tokens.unsqueeze(1)
    return TokenDraw(masked_pos, masked_valid, visible_pos, visible_valid)


def lookup_counts(
    gene_idx: torch.Tensor, counts: torch.Tensor, query_idx: torch.Tensor
) -> torch.Tensor:
    """Counts of arbitrary genes in each cell, from sorted sparse tokens (0 if absent).

    Parameters
    ----------
    gene_idx
        (b, n) token gene indices, sorted ascending per row (padding holds the largest
        index).
    counts
        (b, n) token counts.
    query_idx
        (b, m) genes to look up.
    """
    if gene_idx.shape[1] == 0:
        return torch.zeros(query_idx.shape, dtype=counts.dtype, device=counts.device)
    pos = torch.searchsorted(gene_idx, query_idx).clamp(max=gene_idx.shape[1] - 1)
    found = gene_idx.gather(1, pos) == query_idx
    return torch.where(found, counts.gather(1, pos), torch.zeros_like(counts[:, :1]))
