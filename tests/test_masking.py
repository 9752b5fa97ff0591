import torch

from scexceiver.module import draw_masked_tokens, lookup_counts


def test_draw_respects_tokens_counts_and_disjointness():
    token_mask = torch.zeros(4, 30, dtype=torch.bool)
    lengths = [30, 9, 1, 0]
    for i, n in enumerate(lengths):
        token_mask[i, :n] = True
    draw = draw_masked_tokens(
        token_mask, n_mask=6, n_visible=5, generator=torch.Generator().manual_seed(0)
    )
    # min(n_mask, n // 2) masked: cells with few genes keep at least half visible
    assert draw.masked_valid.sum(1).tolist() == [6, 4, 0, 0]
    assert draw.visible_valid.sum(1).tolist() == [5, 5, 1, 0]
    for i in range(4):
        masked = draw.masked_pos[i][draw.masked_valid[i]]
        visible = draw.visible_pos[i][draw.visible_valid[i]]
        chosen = torch.cat([masked, visible])
        assert token_mask[i, chosen].all()
        assert chosen.unique().numel() == chosen.numel()


def test_draw_is_reproducible_with_a_seeded_generator_and_uniform():
    token_mask = torch.ones(1, 10, dtype=torch.bool)
    a = draw_masked_tokens(token_mask, 3, generator=torch.Generator().manual_seed(1))
    b = draw_masked_tokens(token_mask, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.masked_pos, b.masked_pos)
    hits = torch.zeros(10)
    g = torch.Generator().manual_seed(2)
    for _ in range(2000):
        hits[draw_masked_tokens(token_mask, 3, generator=g).masked_pos[0]] += 1
    # each token is masked with probability 3/10
    assert torch.allclose(hits / 2000, torch.full((10,), 0.3), atol=0.05)


def test_lookup_counts_finds_present_genes_and_zero_otherwise():
    gene_idx = torch.tensor([[2, 5, 9, 100], [0, 100, 100, 100]])
    counts = torch.tensor([[1.0, 4.0, 2.0, 0.0], [7.0, 0.0, 0.0, 0.0]])
    query = torch.tensor([[5, 3, 9], [0, 9, 5]])
    expected = torch.tensor([[4.0, 0.0, 2.0], [7.0, 0.0, 0.0]])
    assert torch.equal(lookup_counts(gene_idx, counts, query), expected)


def test_a_minibatch_of_empty_cells_draws_nothing():
    draw = draw_masked_tokens(torch.zeros((3, 0), dtype=torch.bool), n_mask=4, n_visible=8)
    for part in draw:
        assert part.shape == (3, 0)
