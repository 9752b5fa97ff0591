import numpy as np
import pytest
import torch

from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.model._presets import resolve_preset
from scexceiver.module import ExceiverModule, keep_top_genes, lookup_counts


def test_keep_top_genes_keeps_each_cells_highest_counts(pbmc_small):
    tokens = tokenize_counts(pbmc_small.X[:40])
    lengths = tokens["token_mask"].sum(1)
    cap = 300
    assert (lengths > cap).any() and (lengths <= cap).any()
    idx, counts, mask = keep_top_genes(
        tokens["gene_idx"], tokens["counts"], tokens["token_mask"], cap
    )
    assert idx.shape == (40, cap)
    assert mask.sum(1).tolist() == lengths.clamp(max=cap).tolist()
    for i in range(40):
        all_genes = tokens["gene_idx"][i][tokens["token_mask"][i]]
        all_counts = tokens["counts"][i][tokens["token_mask"][i]]
        kept = idx[i][mask[i]]
        # kept tokens are real tokens, in gene order, with their own counts
        assert torch.all(kept.diff() > 0)
        assert torch.isin(kept, all_genes).all()
        torch.testing.assert_close(counts[i][mask[i]], all_counts[torch.isin(all_genes, kept)])
        dropped = all_counts[~torch.isin(all_genes, kept)]
        if dropped.numel():
            assert counts[i][mask[i]].min() >= dropped.max()
        else:
            assert kept.numel() == lengths[i]
    # same cell, same tokens; fewer tokens than the cap: unchanged
    again = keep_top_genes(tokens["gene_idx"], tokens["counts"], tokens["token_mask"], cap)
    assert torch.equal(again[0], idx)
    unchanged = keep_top_genes(tokens["gene_idx"], tokens["counts"], tokens["token_mask"], 10**6)
    assert unchanged[0] is tokens["gene_idx"]


def test_module_encodes_at_most_max_genes_but_scores_whole_cells(pbmc_small):
    torch.manual_seed(0)
    module = ExceiverModule(pbmc_small.n_vars, 0, **resolve_preset("default", max_genes=200))
    module.fit_statistics(gene_statistics(pbmc_small.X))
    tokens = tokenize_counts(pbmc_small.X[:16])
    assert tokens["gene_idx"].shape[1] > 200
    inference, _, loss = module(
        tokens, inference_kwargs={"generator": torch.Generator().manual_seed(0)}
    )
    assert inference["gene_idx"].shape[1] == 200
    assert torch.isfinite(loss.loss)
    # whole-cell targets come from every expressed gene, not only the encoded ones
    random = inference["query_type"] == 1
    query = inference["query_idx"].masked_fill(~random, 0)
    full = module.normalizer(
        lookup_counts(tokens["gene_idx"], tokens["counts"], query), tokens["library_size"], query
    )
    torch.testing.assert_close(inference["target"][random], full[random])
    with pytest.raises(ValueError, match="max_genes"):
        ExceiverModule(10, token_mode="dense", max_genes=5)
    with pytest.raises(ValueError, match="max_genes"):
        ExceiverModule(10, max_genes=0)
    np.testing.assert_array_equal(inference["attn_mask"].sum(1) <= 200, True)
