"""Training from disk: backed h5ad and several files as one corpus."""

import tracemalloc

import numpy as np
import pytest
import scvi
import torch

import scexceiver
from scexceiver.data import BlockCache, gene_statistics, open_h5ad_corpus

TINY = {"n_latents": 4, "dim": 16, "n_layers": 1, "ff_dim": 32}
HALF = 1350  # cells in file a; file b holds the rest
DROPPED = 2000  # genes missing from file b's panel


@pytest.fixture(scope="module")
def corpus(pbmc, tmp_path_factory):
    """Two h5ad files of real cells with different gene panels, opened as one corpus."""
    root = tmp_path_factory.mktemp("corpus")
    pbmc[:HALF].write_h5ad(root / "a.h5ad")
    pbmc[HALF:, DROPPED:].write_h5ad(root / "b.h5ad")
    return open_h5ad_corpus(root, root / "corpus" / "all.h5ad")


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_corpus_aligns_gene_panels_through_names(corpus, pbmc):
    assert corpus.isbacked
    assert corpus.n_obs == pbmc.n_obs
    assert set(corpus.var_names) == set(pbmc.var_names)
    assert corpus.obs["source"].value_counts().to_dict() == {"a": HALF, "b": pbmc.n_obs - HALF}
    order = corpus.var_names.get_indexer(pbmc.var_names)
    stored = corpus.X[HALF - 5 : HALF + 5].toarray()[:, order]
    expected = pbmc.X[HALF - 5 : HALF + 5].toarray()
    expected[5:, :DROPPED] = 0  # genes outside file b's panel read as undetected
    np.testing.assert_array_equal(stored, expected)


def test_statistics_and_minibatches_stream_from_disk(corpus, pbmc):
    x_bytes = corpus.X.group["data"].nbytes + corpus.X.group["indices"].nbytes
    aligned = pbmc.X.tolil()
    aligned[HALF:, :DROPPED] = 0  # what the corpus holds, in memory
    in_memory = gene_statistics(aligned.tocsr())
    streamed = {}
    peak = _peak_bytes(lambda: streamed.update(s=gene_statistics(corpus.X, chunk_size=64)))
    half = np.arange(HALF)
    peak_half = _peak_bytes(lambda: gene_statistics(corpus.X, half, chunk_size=64))
    # memory is set by the chunk and the gene panel, not by the number of cells
    assert peak < x_bytes / 3
    assert peak < 1.25 * peak_half
    assert streamed["s"].n_cells == pbmc.n_obs
    order = corpus.var_names.get_indexer(pbmc.var_names)
    for field in ("mean", "std", "expressed_mean", "detection_rate"):
        np.testing.assert_allclose(
            getattr(streamed["s"], field)[order], getattr(in_memory, field), rtol=1e-5, atol=1e-6
        )
    assert streamed["s"].median_detected == in_memory.median_detected

    scexceiver.ExceiverModel.setup_anndata(corpus)
    model = scexceiver.ExceiverModel(corpus, **TINY)
    loader = model._make_data_loader(adata=corpus, batch_size=32, shuffle=True)
    batches = []

    def read_two():
        for tensors in loader:
            batches.append(tensors)
            if len(batches) == 2:
                break

    assert _peak_bytes(read_two) < x_bytes / 10
    assert batches[0]["gene_idx"].shape[0] == 32


def test_chunked_reads_read_each_block_once_in_bounded_memory(corpus, pbmc):
    x_bytes = corpus.X.group["data"].nbytes + corpus.X.group["indices"].nbytes
    rows = np.sort(np.random.default_rng(0).choice(corpus.n_obs, 300, replace=False))
    direct = corpus.X[rows]
    cached = BlockCache(corpus.X, chunk_size=64, max_chunks=2).read(rows)
    assert (cached != direct).nnz == 0 and cached.shape == (300, corpus.n_vars)

    scvi.settings.seed = 0
    scexceiver.ExceiverModel.setup_anndata(corpus)
    model = scexceiver.ExceiverModel(corpus, **TINY)
    loader = model._make_data_loader(
        adata=corpus, batch_size=32, shuffle=True, chunked=True, chunk_size=64, window_chunks=4
    )
    library = []

    def read_epoch():
        library.extend(float(t["library_size"].sum()) for t in loader)

    peak = _peak_bytes(read_epoch)
    assert np.isclose(sum(library), float(pbmc.X[:HALF].sum() + pbmc.X[HALF:, DROPPED:].sum()))
    assert loader.dataset.dataset.counts.n_reads == -(-corpus.n_obs // 64)  # each block once
    # memory is set by the window of blocks and one batch, not by the corpus
    assert peak < x_bytes / 4


def test_unmeasured_genes_are_never_targets_and_stats_use_cells_that_measured_them(corpus, pbmc):
    assert corpus.varm["source"].sum().to_dict() == {"a": pbmc.n_vars, "b": pbmc.n_vars - DROPPED}
    dropped = corpus.var_names.get_indexer(pbmc.var_names[:DROPPED])
    scexceiver.ExceiverModel.setup_anndata(corpus, gene_panel_key="source")
    model = scexceiver.ExceiverModel(
        corpus, **TINY, n_random_queries=256, query_sampling="uniform"
    )
    model._fit_statistics(np.arange(corpus.n_obs))
    from_a = gene_statistics(corpus.X, np.arange(HALF))
    stats = model.module.normalizer
    for field in ("mean", "std"):
        np.testing.assert_allclose(
            getattr(stats, field)[dropped].numpy(),
            getattr(from_a, field)[dropped],
            rtol=1e-5,
            atol=1e-7,
        )
    all_cells = gene_statistics(corpus.X)
    measured_by_both = np.setdiff1d(np.arange(corpus.n_vars), dropped)
    np.testing.assert_allclose(
        stats.mean[measured_by_both].numpy(), all_cells.mean[measured_by_both], rtol=1e-5
    )
    # without panels, file b's zeros pull the dropped genes' means down by b's share
    np.testing.assert_allclose(
        all_cells.mean[dropped], from_a.mean[dropped] * HALF / corpus.n_obs, rtol=1e-4, atol=1e-7
    )

    loader = model._make_data_loader(
        adata=corpus,
        indices=np.arange(HALF - 50, HALF + 150),
        batch_size=200,
        measured_genes=model._measured_genes(),
    )
    tensors = next(iter(loader))
    model.module.train()
    out = model.module.inference(**model.module._get_inference_input(tensors))
    queried = out["query_idx"][out["query_valid"]].view(-1)
    in_b = torch.arange(200).repeat_interleave(out["query_valid"].sum(1)) >= 50
    is_dropped = torch.isin(queried, torch.as_tensor(dropped))
    assert int(is_dropped[in_b].sum()) == 0
    # file a's cells still draw them (uniform draws: about 2000 / 32738 of 256 per cell)
    assert int(is_dropped[~in_b].sum()) > 0.5 * 50 * 256 * DROPPED / corpus.n_vars


def test_model_trains_on_a_backed_corpus(corpus):
    scexceiver.ExceiverModel.setup_anndata(corpus, gene_panel_key="source")
    model = scexceiver.ExceiverModel(corpus, **TINY)
    before = model.module.network.gene_embedding.weight.detach().clone()
    model.train(
        max_epochs=3,
        seed=0,
        accelerator="cpu",
        batch_size=64,
        limit_train_batches=4,
        limit_val_batches=1,
        early_stopping=False,
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
        datasplitter_kwargs={"chunk_size": 128, "window_chunks": 2},
    )
    assert corpus.isbacked
    assert model.module.is_fitted
    loss = np.array([float(v) for v in model.history["train_loss"].to_numpy().ravel()])
    assert loss.shape == (3,) and np.isfinite(loss).all()
    assert loss.max() < 1.25 * loss[0]
    assert not np.allclose(before, model.module.network.gene_embedding.weight.detach())
    assert model.get_latent_representation(indices=np.arange(10)).shape == (
        10,
        TINY["n_latents"] * TINY["dim"],
    )
