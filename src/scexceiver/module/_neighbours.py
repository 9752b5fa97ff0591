"""Each cell's nearest neighbours in its standardised input, kept near it in the embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def input_neighbours(values: torch.Tensor, k: int) -> torch.Tensor:
    """Target distribution over each cell's ``k`` most similar other cells.

    Parameters
    ----------
    values
        (b, g) the cells' standardised expression over a shared gene panel.
    k
        Neighbours per cell (at most ``b - 1`` are used).

    Returns
    -------
    torch.Tensor
        (b, b): row ``i`` is ``1 / k`` at the ``k`` cells of highest cosine similarity to
        cell ``i`` in ``values`` (never ``i`` itself), else ``0``; all zeros when ``b < 2``.
    """
    b = values.shape[0]
    target = values.new_zeros(b, b)
    k = min(k, b - 1)
    if k < 1:
        return target
    unit = F.normalize(values.float(), dim=1)
    similarity = (unit @ unit.T).fill_diagonal_(-float("inf"))
    nearest = similarity.topk(k, dim=1).indices
    return target.scatter_(1, nearest, 1.0 / k)


def input_affinities(values: torch.Tensor, perplexity: float, *, steps: int = 40) -> torch.Tensor:
    """Soft target distribution over each cell's most similar other cells.

    As t-SNE's input affinities (van der Maaten & Hinton 2008), but on cosine
    similarity: row ``i`` is the softmax over ``j != i`` of ``beta_i`` times the cosine
    similarity of cells ``i`` and ``j`` in ``values``, with ``beta_i`` found by bisection
    so that the row's perplexity (``exp`` of its entropy) is ``perplexity``. A cell
    with a few very similar cells spreads over those; a cell with many equally similar
    ones spreads over about ``perplexity`` of them.

    Parameters
    ----------
    values
        (b, g) the cells' standardised expression over a shared gene panel.
    perplexity
        Effective number of neighbours per cell (at most ``b - 2`` is used).
    steps
        Bisection steps on ``log10 beta`` in ``[-3, 4]``.

    Returns
    -------
    torch.Tensor
        (b, b) rows summing to 1 with a zero diagonal; all zeros when ``b < 3``.
    """
    b = values.shape[0]
    if b < 3:
        return values.new_zeros(b, b)
    unit = F.normalize(values.float(), dim=1)
    with torch.autocast(values.device.type, enabled=False):  # beta magnifies bf16 error
        similarity = (unit @ unit.T).fill_diagonal_(-float("inf"))
    target_entropy = torch.tensor(min(perplexity, b - 2.0), device=values.device).log()
    low = similarity.new_full((b, 1), -3.0)  # log10 beta
    high = similarity.new_full((b, 1), 4.0)
    for _ in range(steps):
        middle = (low + high) / 2
        p = torch.softmax(similarity * 10**middle, dim=1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(1, keepdim=True)
        too_flat = entropy > target_entropy  # a larger beta lowers the entropy
        low, high = torch.where(too_flat, middle, low), torch.where(too_flat, high, middle)
    return torch.softmax(similarity * 10 ** ((low + high) / 2), dim=1).to(values.dtype)


def neighbour_cross_entropy(
    embedding: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of ``target`` under a softmax over the embeddings' similarities.

    Each cell's distribution over the other cells is the softmax of the cosine
    similarities of the embeddings ``embedding`` (b, d) divided by ``temperature``; the
    loss is the mean over cells of ``-sum_j target_ij log q_ij``. It is smallest when
    every cell's target neighbours are its most similar cells in the embedding.
    """
    unit = F.normalize(embedding.float(), dim=1)
    self_pairs = torch.eye(unit.shape[0], dtype=torch.bool, device=unit.device)
    logits = (unit @ unit.T / temperature).masked_fill(self_pairs, -float("inf"))
    log_q = torch.log_softmax(logits, dim=1).masked_fill(self_pairs, 0.0)
    return -(target * log_q).sum(1).mean()
