"""Presence queries: detected and undetected genes asked in a query type of their own."""

import numpy as np
import pytest
import torch

from scexceiver import ExceiverModel
from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.model._presets import resolve_preset
from scexceiver.module import ExceiverModule
from scexceiver.module._module import QUERY_ANY, QUERY_EXPRESSED, QUERY_PRESENCE


def _queries(adata, n_presence_queries, n_cells=32):
    torch.manual_seed(0)
    config = resolve_preset("default", n_presence_queries=n_presence_queries)
    module = ExceiverModule(adata.n_vars, 0, **config)
    module.fit_statistics(gene_statistics(adata.X))
    module.train()
    tokens = tokenize_counts(adata.X[:n_cells])
    with torch.no_grad():
        out = module.inference(
            **module._get_inference_input(tokens), generator=torch.Generator().manual_seed(1)
        )
    return module, tokens, out


def test_presence_queries_ask_detected_and_undetected_genes(pbmc_small):
    module, tokens, out = _queries(pbmc_small, 48)
    _, _, plain = _queries(pbmc_small, 0)
    n_mask, n_visible = int(module.n_mask), module.n_visible_queries
    assert n_mask > 0
    assert module.network.query_type_embedding.num_embeddings == 3
    # the presence block follows the panel draws: 24 visible genes, then 24 undetected
    n_plain = plain["query_idx"].shape[1]
    assert out["query_idx"].shape[1] == n_plain + 48
    present = slice(n_plain, n_plain + 24)
    absent = slice(n_plain + 24, n_plain + 48)
    visible = slice(n_mask, n_mask + 24)
    for key in ("query_idx", "target", "query_valid"):
        torch.testing.assert_close(out[key][:, present], out[key][:, visible])
    assert torch.all(out["query_type"][:, visible] == QUERY_EXPRESSED)
    assert torch.all(out["query_type"][:, n_mask + n_visible : n_plain] == QUERY_ANY)
    assert torch.all(out["query_type"][:, n_plain:] == QUERY_PRESENCE)
    assert not out["query_masked"][:, n_plain:].any()
    detection = np.asarray((pbmc_small.X > 0).mean(0)).ravel()
    for row in range(8):
        expressed = tokens["gene_idx"][row][tokens["token_mask"][row]]
        genes = out["query_idx"][row, absent]
        assert out["query_valid"][row, absent].all()
        assert not torch.isin(genes, expressed).any()
        assert (detection[genes.numpy()] > 0).all()  # never a gene no training cell detects
        # an undetected gene's target is the processed value of a zero count
        zero = module.normalizer(
            torch.zeros(1, 24), tokens["library_size"][row : row + 1], genes.unsqueeze(0)
        )
        torch.testing.assert_close(out["target"][row, absent], zero[0])
    # the masked genes and the panel draws are those of the module without them
    torch.testing.assert_close(out["query_idx"][:, :n_plain], plain["query_idx"])


def test_undetected_genes_are_drawn_by_detection_rate(pbmc_small):
    module, _, out = _queries(pbmc_small, 256, n_cells=200)
    n_plain = out["query_idx"].shape[1] - 256
    genes = out["query_idx"][:, n_plain + 128 :].ravel().numpy()
    drawn = np.bincount(genes, minlength=pbmc_small.n_vars)
    detection = module.detection_rate.numpy()
    low, high = np.quantile(detection, [0.25, 0.75])
    rare, frequent = detection <= low, (detection >= high) & (detection < 0.9)
    # per gene and cell that lacks it, genes are drawn about in proportion to their rate
    per_frequent = drawn[frequent].sum() / (1 - detection[frequent]).sum()
    per_rare = drawn[rare].sum() / (1 - detection[rare]).sum()
    expected = detection[frequent].mean() / detection[rare].mean()
    assert expected > 3
    assert 0.7 * expected < per_frequent / per_rare < 1.4 * expected


@pytest.mark.parametrize("value", [-2, 3, 258])
def test_presence_queries_out_of_range_are_refused(pbmc_small, value):
    adata = pbmc_small[:50].copy()
    ExceiverModel.setup_anndata(adata)
    with pytest.raises(ValueError, match="n_presence_queries must be an even number"):
        ExceiverModel(adata, n_presence_queries=value)


def test_presence_queries_train_save_and_reload(pbmc_small, tmp_path):
    adata = pbmc_small[:200, :400].copy()
    ExceiverModel.setup_anndata(adata)
    model = ExceiverModel(adata, n_presence_queries=16, n_latents=4, dim=16)
    model.train(max_epochs=2, batch_size=50, accelerator="cpu")
    loss = model.history["train_loss"].to_numpy(dtype=float)
    assert np.isfinite(loss).all()
    detection = np.asarray((adata.X > 0).mean(0)).ravel()
    # the training split's detection rates, close to those of all 200 cells
    np.testing.assert_allclose(model.module.detection_rate.numpy(), detection, atol=0.1)
    model.save(tmp_path / "presence")
    loaded = ExceiverModel.load(tmp_path / "presence", adata=adata)
    assert loaded.module.n_presence_queries == 16
    torch.testing.assert_close(loaded.module.detection_rate, model.module.detection_rate)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
