import inspect

import pytest
import torch

from scexceiver.model._presets import DEFAULT, PAPER
from scexceiver.module import Exceiver, ExceiverModule


def _network(n_genes, preset, **overrides):
    # the preset's keys that ExceiverModule takes itself; the rest configure the network
    shared = {"n_genes", "n_batch", "network_kwargs"}
    module_only = set(inspect.signature(ExceiverModule).parameters) - shared
    config = {k: v for k, v in {**preset, **overrides}.items() if k not in module_only}
    if config.get("tie_gene_embeddings", True) is None:  # as the module resolves it
        config["tie_gene_embeddings"] = not preset.get("neighbour_preservation")
    return Exceiver(n_genes, **config)


def test_paper_parameter_count_matches_release():
    network = _network(19_067, PAPER)
    n_params = sum(p.numel() for p in network.parameters() if p.requires_grad)
    assert n_params == 225_359
    assert network.gene_embedding.weight.shape == (19_068, 4)
    assert network.latents.shape == (128, 4)
    sizes = {
        name: sum(p.numel() for p in child.parameters())
        for name, child in network.named_children()
    }
    assert sizes["encoder_cross_attention"] == 152
    assert sizes["decoder_cross_attention"] == 152
    assert sizes["latent_transformer"] == 8 * 18_532
    assert sizes["head"] == 15


def _cell(n_genes=50, n_tokens=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    gene_idx = torch.randperm(n_genes, generator=g)[:n_tokens].sort().values[None]
    values = torch.rand(1, n_tokens, generator=g) * 3 + 0.5
    return gene_idx, values, torch.ones(1, n_tokens, dtype=torch.bool)


def test_shapes_of_encode_and_decode():
    network = _network(50, DEFAULT, n_batch=3)
    gene_idx, values, mask = _cell()
    batch = torch.tensor([[2]])
    latents, weights = network.encode(gene_idx, values, mask, batch, return_weights=True)
    assert latents.shape == (1, DEFAULT["n_latents"], DEFAULT["dim"])
    # null token + 20 gene tokens
    assert weights.shape == (1, DEFAULT["heads"], DEFAULT["n_latents"], 21)
    prediction = network.decode(latents, torch.tensor([[1, 2, 3]]), batch, library=torch.zeros(1))
    assert prediction.shape == (1, 3)


def test_paper_encoder_sees_only_the_sign_of_values():
    """LayerNorm(v * E_g) = LN(E_g) for v > 0: the release discards expression levels."""
    torch.manual_seed(0)
    network = _network(50, PAPER, n_layers=1)
    gene_idx, values, _ = _cell()
    bias = torch.zeros(1, values.shape[1])
    low, _ = network.encode(gene_idx, values, bias)
    high, _ = network.encode(gene_idx, values * 7.0, bias)
    torch.testing.assert_close(low, high, atol=1e-4, rtol=1e-4)


def test_default_encoder_depends_on_expression_level():
    torch.manual_seed(0)
    network = _network(50, DEFAULT)
    gene_idx, values, mask = _cell()
    low, _ = network.encode(gene_idx, values, mask)
    high, _ = network.encode(gene_idx, values * 7.0, mask)
    assert (low - high).abs().max() > 1e-2


def test_output_bias_starts_at_gene_means_per_query_type():
    network = _network(5, DEFAULT)
    network.init_output_bias(torch.arange(5.0))
    assert torch.equal(network.output_bias[0, :5], torch.arange(5.0))
    assert torch.all(network.output_bias[1] == 1.0)


def test_batch_injection_changes_where_batch_enters():
    gene_idx, values, mask = _cell()
    for injection in ("decoder", "encoder"):
        torch.manual_seed(0)
        network = _network(50, DEFAULT, n_batch=2, batch_injection=injection)
        with torch.no_grad():
            network.batch_embedding.weight.normal_()
        a, _ = network.encode(gene_idx, values, mask, torch.tensor([[0]]))
        b, _ = network.encode(gene_idx, values, mask, torch.tensor([[1]]))
        same_latents = torch.allclose(a, b)
        assert same_latents == (injection == "decoder")
        query = torch.tensor([[4, 5]])
        library = torch.zeros(1)
        pa = network.decode(a, query, torch.tensor([[0]]), library=library)
        pb = network.decode(a, query, torch.tensor([[1]]), library=library)
        assert torch.allclose(pa, pb) == (injection == "encoder")


def test_centred_encoding_scales_embeddings_by_the_z_score():
    torch.manual_seed(0)
    centred = _network(50, DEFAULT, value_encoding="centred")
    scale = _network(50, DEFAULT, value_encoding="scale")
    scale.load_state_dict(centred.state_dict())
    gene_idx, values, mask = _cell()
    embedding = centred.gene_embedding(gene_idx)
    # processed values are z-scores plus one: a gene at its mean level is a zero token
    assert centred.gene_tokens(gene_idx, torch.ones_like(values)).abs().max() == 0
    torch.testing.assert_close(
        centred.gene_tokens(gene_idx, values), (values - 1).unsqueeze(-1) * embedding
    )
    torch.testing.assert_close(
        centred.gene_tokens(gene_idx, values), scale.gene_tokens(gene_idx, values) - embedding
    )
    # and the latents differ from the scale encoding's with the same weights
    a, _ = centred.encode(gene_idx, values, mask)
    b, _ = scale.encode(gene_idx, values, mask)
    assert not torch.allclose(a, b, atol=1e-4)
    # the default: centred with two or more batches, scale without
    assert _network(50, DEFAULT).value_encoding == "scale"
    assert _network(50, DEFAULT, n_batch=2).value_encoding == "centred"


def test_identity_encoding_ignores_values_and_bad_encoding_is_rejected():
    torch.manual_seed(0)
    network = _network(50, DEFAULT, value_encoding="identity")
    gene_idx, values, mask = _cell()
    low, _ = network.encode(gene_idx, values, mask)
    high, _ = network.encode(gene_idx, values * 7.0, mask)
    torch.testing.assert_close(low, high)
    with pytest.raises(ValueError, match="value_encoding"):
        _network(50, DEFAULT, value_encoding="rank")
