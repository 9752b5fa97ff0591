"""Presence queries: visible genes asked again with the panel genes' query type."""

import pytest
import torch

from scexceiver import ExceiverModel
from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.model._presets import resolve_preset
from scexceiver.module import ExceiverModule
from scexceiver.module._module import QUERY_ANY, QUERY_EXPRESSED


def _queries(adata, n_presence_queries):
    torch.manual_seed(0)
    config = resolve_preset("default", n_presence_queries=n_presence_queries)
    module = ExceiverModule(adata.n_vars, 0, **config)
    module.fit_statistics(gene_statistics(adata.X))
    module.train()
    tokens = tokenize_counts(adata.X[:32])
    with torch.no_grad():
        out = module.inference(
            **module._get_inference_input(tokens), generator=torch.Generator().manual_seed(1)
        )
    return module, tokens, out


def test_presence_queries_repeat_visible_genes_as_panel_queries(pbmc_small):
    module, tokens, out = _queries(pbmc_small, 48)
    _, _, plain = _queries(pbmc_small, 0)
    n_mask, n_visible = int(module.n_mask), module.n_visible_queries
    assert n_mask > 0
    # the presence block sits between the visible queries and the panel draws
    assert out["query_idx"].shape[1] == plain["query_idx"].shape[1] + 48
    visible = slice(n_mask, n_mask + 48)
    presence = slice(n_mask + n_visible, n_mask + n_visible + 48)
    for key in ("query_idx", "target", "query_valid"):
        torch.testing.assert_close(out[key][:, presence], out[key][:, visible])
    assert torch.all(out["query_type"][:, visible] == QUERY_EXPRESSED)
    assert torch.all(out["query_type"][:, presence] == QUERY_ANY)
    assert not out["query_masked"][:, presence].any()
    # every valid presence query is a gene the cell expresses and the encoder sees
    # (no depth augmentation without batches)
    for row in range(8):
        seen = set(tokens["gene_idx"][row][out["attn_mask"][row]].tolist())
        valid = out["query_valid"][row, presence]
        genes = out["query_idx"][row, presence][valid].tolist()
        assert len(genes) == 48
        assert set(genes) <= seen
    # the masked genes and the panel draws are those of the module without them
    torch.testing.assert_close(out["query_idx"][:, :n_mask], plain["query_idx"][:, :n_mask])
    torch.testing.assert_close(
        out["query_idx"][:, presence.stop :], plain["query_idx"][:, n_mask + n_visible :]
    )


@pytest.mark.parametrize("value", [-1, 129])
def test_presence_queries_out_of_range_are_refused(pbmc_small, value):
    adata = pbmc_small[:50].copy()
    ExceiverModel.setup_anndata(adata)
    with pytest.raises(ValueError, match="n_presence_queries must be between 0 and"):
        ExceiverModel(adata, n_presence_queries=value)
