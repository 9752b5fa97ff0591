import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from torch.utils._python_dispatch import TorchDispatchMode

from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.model._presets import resolve_preset
from scexceiver.module import ExceiverModule


def _module(adata, preset="default", **overrides):
    torch.manual_seed(0)
    module = ExceiverModule(adata.n_vars, 0, **resolve_preset(preset, **overrides))
    module.fit_statistics(gene_statistics(adata.X))
    return module


def _dense_twin(adata, sparse_module, dense_mask="boolean"):
    """A dense-token module with the same weights as ``sparse_module``."""
    dense = _module(
        adata,
        token_mode="dense",
        dense_mask=dense_mask,
        null_token=False,
        n_visible_queries=0,
        n_random_queries=0,
        input_thinning=0.0,
    )
    dense.load_state_dict(sparse_module.state_dict())
    return dense


@torch.no_grad()
def _latents(module, tokens):
    return module.inference(**module._get_inference_input(tokens), masking=False)["latents"]


def test_sparse_and_dense_boolean_paths_give_the_same_latents(pbmc_small):
    sparse = _module(pbmc_small, null_token=False)
    dense = _dense_twin(pbmc_small, sparse)
    tokens = tokenize_counts(pbmc_small.X[:16])
    torch.testing.assert_close(
        _latents(sparse, tokens), _latents(dense, tokens), atol=1e-5, rtol=1e-4
    )


def test_sparse_and_dense_agree_when_every_gene_is_a_token():
    from anndata import AnnData
    from scipy import sparse as sp

    rng = np.random.default_rng(0)
    counts = rng.integers(1, 20, size=(8, 40)).astype(np.float32)  # no zeros
    adata = AnnData(sp.csr_matrix(counts))
    sparse_module = _module(adata, null_token=False)
    tokens = tokenize_counts(adata.X)
    reference = _latents(sparse_module, tokens)
    boolean = _latents(_dense_twin(adata, sparse_module), tokens)
    torch.testing.assert_close(reference, boolean, atol=1e-5, rtol=1e-4)
    # with no zero genes the additive mask is all zeros: same result again
    additive = _latents(_dense_twin(adata, sparse_module, "additive"), tokens)
    torch.testing.assert_close(reference, additive, atol=1e-5, rtol=1e-4)


class _ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_sparse_path_never_builds_a_cells_by_genes_tensor(pbmc_small):
    module = _module(pbmc_small)
    n_cells, n_genes = 7, pbmc_small.n_vars
    tokens = tokenize_counts(pbmc_small.X[:n_cells])
    with _ShapeRecorder() as recorder:
        _, _, loss = module(tokens)
        loss.loss.backward()
    cell_by_gene = [
        s for s in recorder.shapes if len(s) >= 2 and s[0] == n_cells and max(s[1:]) >= n_genes
    ]
    assert recorder.shapes and not cell_by_gene
    # the dense path does build one, which is what this test would catch
    dense = _module(pbmc_small, "paper", n_layers=1)
    with _ShapeRecorder() as recorder:
        dense(tokens)
    assert any(len(s) >= 2 and s[0] == n_cells and max(s[1:]) >= n_genes for s in recorder.shapes)


def test_loss_is_mse_over_valid_queries_and_masked_genes_are_hidden(pbmc_small):
    module = _module(pbmc_small, loss_space="standardised")
    tokens = tokenize_counts(pbmc_small.X[:32])
    g = torch.Generator().manual_seed(0)
    inference, generative, loss = module(tokens, inference_kwargs={"generator": g})
    valid, target = inference["query_valid"], inference["target"]
    expected = ((generative["prediction"] - target)[valid] ** 2).mean()
    torch.testing.assert_close(loss.loss, expected)
    n_mask = int(module.n_mask)
    assert n_mask == int(0.15 * np.median(np.diff(pbmc_small.X.indptr)))
    assert inference["query_masked"].sum(1).tolist() == [n_mask] * 32
    # masked genes are not visible to the encoder
    masked_genes = inference["query_idx"][inference["query_masked"]]
    rows = torch.nonzero(inference["query_masked"])[:, 0]
    visible = inference["attn_mask"][rows] & (inference["gene_idx"][rows] == masked_genes[:, None])
    assert not visible.any()
    # targets of masked genes are the processed values of expressed genes
    assert torch.all(target[inference["query_masked"]] > 1 - module.normalizer.mean[:-1].max())


def test_log_loss_space_weights_each_gene_by_its_log_variance(pbmc_small):
    module = _module(pbmc_small, loss_space="log")
    tokens = tokenize_counts(pbmc_small.X[:32])
    g = torch.Generator().manual_seed(0)
    inference, generative, loss = module(tokens, inference_kwargs={"generator": g})
    std = module.normalizer.std[:-1]
    weight = (std / std.square().mean().sqrt()).square()
    assert weight.mean().item() == pytest.approx(1.0)
    valid, query = inference["query_valid"], inference["query_idx"]
    sq_err = (generative["prediction"] - inference["target"]) ** 2
    # the error in log1p(CP10k) units is the standardised error times the gene's variance
    expected = (sq_err * weight[query])[valid].mean()
    torch.testing.assert_close(loss.loss, expected)
    masked = inference["query_masked"]
    torch.testing.assert_close(loss.extra_metrics["masked_mse"], sq_err[masked].mean())
    # genes weigh differently: the most variable queried gene far above the least
    queried = weight[query[valid]]
    assert queried.max() > 10 * queried.min()
    with pytest.raises(ValueError, match="loss_space"):
        ExceiverModule(10, loss_space="counts")


def test_batch_adversary_trains_classifier_and_encoder_apart_and_leaves_the_loss(pbmc_small):
    torch.manual_seed(0)
    # the adversary alone (the default's per-batch options need per-batch statistics)
    off = {"batch_standardise": False, "batch_output_bias": False, "batch_context": False}
    config = resolve_preset("default", batch_adversary=0.5, **off)
    module = ExceiverModule(pbmc_small.n_vars, 2, **config)
    module.fit_statistics(gene_statistics(pbmc_small.X))
    tokens = tokenize_counts(pbmc_small.X[:32])
    batch = (torch.arange(32) % 2).view(-1, 1)
    tokens[REGISTRY_KEYS.BATCH_KEY] = batch
    inference, generative, out = module(
        tokens, inference_kwargs={"generator": torch.Generator().manual_seed(0)}
    )
    adversary, module.adversary = module.adversary, None
    recon = module.loss(tokens, inference, generative)
    module.adversary = adversary
    # the reported loss is the reconstruction error; the cross-entropy is a metric
    torch.testing.assert_close(out.loss, recon.loss)
    logits = adversary.classifier(module.embed(inference["latents"]))
    ce = F.cross_entropy(logits, batch.view(-1))
    torch.testing.assert_close(out.extra_metrics["batch_adversary_ce"], ce.detach())
    # the classifier descends the cross-entropy on the true batches; the encoder descends
    # 0.5 x the cross-entropy against uniform, without moving the classifier
    uniform = -logits.log_softmax(-1).mean()
    head, latents = adversary.classifier[-1].weight, module.network.latents
    total = torch.autograd.grad(out.loss, [head, latents], retain_graph=True)
    rec = torch.autograd.grad(recon.loss, latents, retain_graph=True)[0]
    torch.testing.assert_close(total[0], torch.autograd.grad(ce, head, retain_graph=True)[0])
    confusion = torch.autograd.grad(uniform, latents)[0]
    torch.testing.assert_close(total[1], rec + 0.5 * confusion)
    assert confusion.abs().max() > 0
    assert ExceiverModule(10, 3).adversary is None  # weight 0: none
    with pytest.raises(ValueError, match="batch_adversary"):
        ExceiverModule(10, 2, batch_adversary=-1.0)


def test_gaussian_latents_sample_in_training_price_dimensions_and_leave_the_loss(pbmc_small):
    module = _module(pbmc_small, latent_kl=0.2)
    tokens = tokenize_counts(pbmc_small.X[:32])
    module.train()
    inference, generative, out = module(
        tokens, inference_kwargs={"generator": torch.Generator().manual_seed(0)}
    )
    mean, sample = inference["latents"], inference["latent_sample"]
    # the decoder reads a sample with the initial std exp(-4 / 2) around the mean
    torch.testing.assert_close(
        (sample - mean).std(), torch.tensor(np.exp(-2.0), dtype=torch.float32), rtol=0.05, atol=0
    )
    # KL per dimension: that of torch.distributions, averaged over the K x dim dimensions
    log_var = module.bottleneck.log_var(mean)
    posterior = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    prior = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(posterior, prior).flatten(1).mean(1)
    torch.testing.assert_close(inference["latent_kl"], expected)
    torch.testing.assert_close(out.extra_metrics["latent_kl"], expected.mean().detach())
    # the reported loss is the reconstruction error of the sampled latents; the gradient
    # also carries 0.2 x the KL divergence
    bottleneck, module.bottleneck = module.bottleneck, None
    recon = module.loss(tokens, inference, generative)
    module.bottleneck = bottleneck
    torch.testing.assert_close(out.loss, recon.loss)
    latents = module.network.latents
    total = torch.autograd.grad(out.loss, latents, retain_graph=True)[0]
    rec = torch.autograd.grad(recon.loss, latents, retain_graph=True)[0]
    kl = torch.autograd.grad(expected.mean(), latents)[0]
    assert kl.abs().max() > 0
    torch.testing.assert_close(total, rec + 0.2 * kl)
    # in evaluation the embedding is the mean, deterministic
    module.eval()
    with torch.no_grad():
        first = module.inference(**module._get_inference_input(tokens), masking=False)
        again = _latents(module, tokens)
    torch.testing.assert_close(first["latent_sample"], first["latents"])
    torch.testing.assert_close(again, first["latents"], rtol=0, atol=0)
    assert _module(pbmc_small).bottleneck is None  # weight 0: deterministic latents
    with pytest.raises(ValueError, match="latent_kl"):
        ExceiverModule(10, latent_kl=-0.1)


def test_random_queries_follow_the_variance_weights(pbmc_small):
    module = _module(pbmc_small)
    never = torch.nonzero(module.query_weights == 0).ravel()
    tokens = tokenize_counts(pbmc_small.X[:64])
    inference = module.inference(**module._get_inference_input(tokens))
    drawn = inference["query_idx"][inference["query_type"] == 1]
    assert drawn.numel() == 64 * module.n_random_queries
    assert not torch.isin(drawn, never).any()


def test_zero_count_cell_and_invalid_options(pbmc_small):
    module = _module(pbmc_small)
    x = pbmc_small.X[:3].copy().tolil()
    x[1, :] = 0
    tokens = tokenize_counts(x.tocsr())
    _, _, loss = module(tokens)
    assert torch.isfinite(loss.loss)
    with torch.no_grad():
        latents = module.inference(**module._get_inference_input(tokens), masking=False)["latents"]
    assert torch.isfinite(latents).all()
    with pytest.raises(ValueError, match="token_mode"):
        ExceiverModule(10, token_mode="ragged")
    with pytest.raises(ValueError, match="sparse"):
        ExceiverModule(10, token_mode="dense", n_random_queries=3)


def test_bf16_autocast_matches_fp32(trained):
    model, adata = trained
    module = model.module.cpu().eval()
    tokens = tokenize_counts(adata.X[:128])

    def run(bf16):
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            inference, _, out = module(tokens, inference_kwargs={"generator": generator})
        return inference["latents"].float(), out.loss

    latents32, loss32 = run(False)
    latents16, loss16 = run(True)
    error = (latents16 - latents32).norm() / latents32.norm()
    assert 0 < error < 0.03  # bf16 did change the arithmetic, by a few parts per thousand
    torch.testing.assert_close(loss16, loss32, rtol=0.01, atol=0.0)
