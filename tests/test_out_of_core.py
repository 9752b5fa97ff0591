"""Training from disk: backed h5ad and several files as one corpus."""

import tracemalloc

import numpy as np
import pytest
import scvi

import scexceiver
from scexceiver.data import gene_statistics, open_h5ad_corpus

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


def test_model_trains_on_a_backed_corpus(corpus):
    scvi.settings.seed = 0
    scexceiver.ExceiverModel.setup_anndata(corpus)
    model = scexceiver.ExceiverModel(corpus, **TINY)
    before = model.module.network.gene_embedding.weight.detach().clone()
    model.train(
        max_epochs=1,
        accelerator="cpu",
        batch_size=64,
        limit_train_batches=3,
        limit_val_batches=1,
        early_stopping=False,
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
    )
    assert corpus.isbacked
    assert model.module.is_fitted
    loss = np.array([float(v) for v in model.history["train_loss"].to_numpy().ravel()])
    assert loss.shape == (1,) and np.isfinite(loss[0])
    assert not np.allclose(before, model.module.network.gene_embedding.weight.detach())
    assert model.get_latent_representation(indices=np.arange(10)).shape == (
        10,
        TINY["n_latents"] * TINY["dim"],
    )
