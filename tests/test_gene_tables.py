"""Tied and untied gene tables (``tie_gene_embeddings``): which table each path reads."""

import anndata
import numpy as np
import pytest
import scvi
import torch

from scexceiver import ExceiverModel
from scexceiver.module import Exceiver

SMALL = {"n_latents": 8, "dim": 32, "n_layers": 1, "ff_dim": 64, "head_hidden": 32}


def _table_gradients(network: Exceiver, path: str) -> dict[str, float]:
    """Gradient norm of each gene table after backpropagating one encode or decode."""
    network.zero_grad()
    gene_idx = torch.tensor([[0, 3, 5], [1, 2, 7]])
    values = torch.tensor([[1.5, 0.2, 2.0], [0.7, 1.1, 3.0]])
    latents, _ = network.encode(gene_idx, values, torch.ones_like(gene_idx, dtype=torch.bool))
    if path == "decode":
        latents = latents.detach()
        output = network.decode(latents, torch.tensor([[4, 6], [0, 9]]))
    else:
        output = latents
    output.pow(2).sum().backward()
    tables = {"decoder": network.gene_embedding, "encoder": network.encoder_gene_embedding}
    return {
        name: 0.0 if table is None or table.weight.grad is None else table.weight.grad.norm()
        for name, table in tables.items()
    }


def test_an_untied_encoder_reads_its_own_table_and_the_decoder_the_shared_one():
    torch.manual_seed(0)
    untied = Exceiver(10, **SMALL, embedding_std=0.02, tie_gene_embeddings=False)
    encoder, decoder = untied.encoder_gene_embedding.weight, untied.gene_embedding.weight
    # a draw of its own, with the padding row kept at zero
    assert not torch.equal(encoder, decoder)
    assert torch.count_nonzero(encoder[10]) == 0
    assert 0.01 < encoder[:10].std() < 0.03
    on_encode = _table_gradients(untied, "encode")
    assert on_encode["encoder"] > 0 and on_encode["decoder"] == 0
    on_decode = _table_gradients(untied, "decode")
    assert on_decode["decoder"] > 0 and on_decode["encoder"] == 0

    torch.manual_seed(0)
    tied = Exceiver(10, **SMALL, embedding_std=0.02)
    assert tied.encoder_gene_embedding is None
    assert _table_gradients(tied, "encode")["decoder"] > 0
    # the tied network's parameters and their draws are what they were before the option
    assert "encoder_gene_embedding.weight" not in tied.state_dict()
    torch.testing.assert_close(tied.gene_embedding.weight, decoder)
    torch.testing.assert_close(tied.latents, untied.latents)


@pytest.fixture(scope="module")
def untied_model(pbmc_small):
    adata = pbmc_small[:300].copy()
    ExceiverModel.setup_anndata(adata)
    scvi.settings.seed = 0
    model = ExceiverModel(adata, tie_gene_embeddings=False, **SMALL)
    model.train(max_epochs=3, batch_size=64, early_stopping=False, enable_progress_bar=False)
    return model, adata


def test_an_untied_model_trains_both_tables_and_reports_the_decoders(untied_model, tmp_path):
    model, adata = untied_model
    network = model.module.network
    assert not torch.allclose(network.encoder_gene_embedding.weight, network.gene_embedding.weight)
    np.testing.assert_array_equal(
        model.get_gene_embeddings(), network.gene_embedding.weight[:-1].detach().numpy()
    )
    model.save(tmp_path / "m")
    loaded = ExceiverModel.load(tmp_path / "m", adata=adata)
    assert loaded.module.network.encoder_gene_embedding is not None
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )


def test_a_frozen_query_keeps_the_reference_rows_of_both_tables(untied_model):
    model, adata = untied_model
    extra = adata[:120, :50].copy()
    extra.var_names = [f"NEW_{g}" for g in extra.var_names]
    query = anndata.concat([adata[:120].copy(), extra], axis=1, merge="first")
    scvi.settings.seed = 0
    q = ExceiverModel.load_query_data(query, model, freeze_backbone=True)
    n_ref = len(model.gene_vocabulary_)
    names = ("network.gene_embedding.weight", "network.encoder_gene_embedding.weight")
    before = {name: q.module.state_dict()[name].clone() for name in names}
    reference = model.module.state_dict()
    q.train(max_epochs=2, batch_size=60, warmup_steps=1, train_size=1.0, early_stopping=False)
    after = q.module.state_dict()
    for name in names:
        assert torch.equal(after[name][:n_ref], reference[name][:n_ref])
        assert not torch.equal(after[name][n_ref:-1], before[name][n_ref:-1])


@pytest.mark.parametrize(
    ("batches", "overrides", "expected"),
    [
        (1, {}, (0.0, True)),
        (2, {}, (3.0, False)),
        (2, {"batch_standardise": False}, (0.0, True)),  # its targets would not cross
        (2, {"neighbour_preservation": 0.0}, (0.0, True)),
        (2, {"tie_gene_embeddings": True}, (3.0, True)),
        (1, {"neighbour_preservation": 1.0}, (1.0, False)),
    ],
)
def test_the_default_resolves_and_records_its_neighbour_options(
    pbmc_small, batches, overrides, expected
):
    adata = pbmc_small[:60, :200].copy()
    adata.obs["batch"] = [f"b{i % batches}" for i in range(adata.n_obs)]
    ExceiverModel.setup_anndata(adata, batch_key="batch")
    model = ExceiverModel(adata, **overrides, **SMALL)
    recorded = model.init_params_["kwargs"]["model_kwargs"]
    assert (recorded["neighbour_preservation"], recorded["tie_gene_embeddings"]) == expected
    assert model.module.neighbour_preservation == expected[0]
    assert (model.module.network.encoder_gene_embedding is None) == expected[1]
