import math

import pytest
import torch

from scexceiver.module import Attention, CrossAttentionBlock


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(3, 5, 8, generator=g)
    context = torch.randn(3, 11, 8, generator=g)
    mask = torch.rand(3, 11, generator=g) > 0.4
    mask[:, 0] = True
    return queries, context, mask


def test_sdpa_matches_explicit_weights(inputs):
    queries, context, mask = inputs
    attention = Attention(8, 8, heads=2)
    fast, none = attention(queries, context, attn_mask=mask)
    slow, weights = attention(queries, context, attn_mask=mask, return_weights=True)
    assert none is None
    assert weights.shape == (3, 2, 5, 11)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    # masked keys get exactly zero weight; weights are a distribution
    assert torch.all(weights[~mask[:, None, None, :].expand_as(weights)] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 5))


def test_boolean_mask_equals_dropping_keys(inputs):
    queries, context, mask = inputs
    attention = Attention(8, 8, heads=2)
    out, _ = attention(queries, context, attn_mask=mask)
    for i in range(3):
        alone, _ = attention(queries[i : i + 1], context[i : i + 1, mask[i]])
        torch.testing.assert_close(out[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_additive_float_mask_shifts_logits(inputs):
    queries, context, _ = inputs
    attention = Attention(8, 8, heads=2)
    bias = torch.zeros(3, 11)
    bias[:, 3] = 1.0
    _, plain = attention(queries, context, return_weights=True)
    fast, biased = attention(queries, context, attn_mask=bias, return_weights=True)
    slow, _ = attention(queries, context, attn_mask=bias, return_weights=False)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    # +1 on a logit multiplies that key's unnormalised weight by e
    ratio = (biased[..., 3] / biased[..., 4]) / (plain[..., 3] / plain[..., 4])
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.e), atol=1e-4, rtol=1e-4)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        Attention(6, 6, heads=4)


def test_cross_attention_block_parameter_count_and_residual():
    block = CrossAttentionBlock(4, 4, heads=4)
    assert sum(p.numel() for p in block.parameters()) == 152
    queries = torch.randn(2, 3, 4)
    out, _ = block(queries, torch.randn(2, 7, 4))
    assert out.shape == queries.shape
