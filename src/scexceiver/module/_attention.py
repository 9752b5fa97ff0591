"""Attention blocks: multi-head attention on SDPA and the Perceiver cross-attention block."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    """Multi-head attention on :func:`~torch.nn.functional.scaled_dot_product_attention`.

    Parameters
    ----------
    query_dim
        Width of the queries (and of the output).
    context_dim
        Width of the keys/values.
    heads
        Number of attention heads; must divide ``query_dim``.
    """

    def __init__(self, query_dim: int, context_dim: int, *, heads: int) -> None:
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"query_dim={query_dim} must be divisible by heads={heads}.")
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim)
        self.to_k = nn.Linear(context_dim, query_dim)
        self.to_v = nn.Linear(context_dim, query_dim)
        self.to_out = nn.Linear(query_dim, query_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # (b, n, h * d) -> (b, h, n, d)
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``queries`` (b, m, query_dim) to ``context`` (b, n, context_dim).

        Parameters
        ----------
        queries
            Query tokens.
        context
            Key/value tokens.
        attn_mask
            Either a boolean (b, n) key mask (``True`` = attend) or a float (b, n) additive
            bias on the attention logits, broadcast over heads and queries.
        return_weights
            Also return the attention weights (b, heads, m, n). Materialises them, so it
            is meant for interpretation only.

        Returns
        -------
        tuple
            The attended queries (b, m, query_dim) and the weights or ``None``.
        """
        q = self._split_heads(self.to_q(queries))
        k = self._split_heads(self.to_k(context))
        v = self._split_heads(self.to_v(context))
        mask = None if attn_mask is None else attn_mask[:, None, None, :]
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        if return_weights:
            logits = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
            if mask is not None:
                logits = (
                    logits.masked_fill(~mask, float("-inf"))
                    if mask.dtype == torch.bool
                    else logits + mask
                )
            weights = logits.softmax(dim=-1)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        # (b, h, m, d) -> (b, m, h * d)
        out = out.transpose(1, 2).flatten(2)
        return self.to_out(out), weights


class CrossAttentionBlock(nn.Module):
    """Perceiver cross-attention block: normalised attention with a residual, then an MLP.

    The MLP is ``LayerNorm -> Linear -> GELU -> LayerNorm -> Linear`` with a residual,
    as in the released Exceiver.

    Parameters
    ----------
    query_dim
        Width of the queries.
    context_dim
        Width of the keys/values.
    heads
        Number of attention heads.
    mlp_ratio
        Hidden width of the MLP as a multiple of ``query_dim``.
    norm_context
        Apply a LayerNorm to the context tokens. LayerNorm is scale invariant, so on
        value-scaled tokens it keeps only the sign of the value (the released model's
        behaviour); the default preset turns it off.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        *,
        heads: int,
        mlp_ratio: int = 1,
        norm_context: bool = True,
    ) -> None:
        super().__init__()
        self.norm_query = nn.LayerNorm(query_dim)
        self.norm_context = nn.LayerNorm(context_dim) if norm_context else nn.Identity()
        self.attention = Attention(query_dim, context_dim, heads=heads)
        hidden = query_dim * mlp_ratio
        self.mlp = nn.Sequential(
            nn.LayerNorm(query_dim),
            nn.Linear(query_dim, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden),
            nn.Linear(hidden, query_dim),
        )

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        return_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cross-attend ``queries`` to ``context``; see :meth:`Attention.forward`."""
        attended, weights = self.attention(
            self.norm_query(queries),
            self.norm_context(context),
            attn_mask=attn_mask,
            return_weights=return_weights,
        )
        x = queries + attended
        return x + self.mlp(x), weights
