"""The pretrained PBMC model shipped inside the package."""

import numpy as np
import pytest

import scexceiver
from scexceiver import ExceiverModel

KANG_CTRL, KANG_STIM, PBMC3K = 6548, 7451, 2700


@pytest.fixture(scope="module")
def reference():
    return scexceiver.pretrained.pbmc(accelerator="cpu")


@pytest.fixture(scope="module")
def unseen():
    """PBMC 68k-reduced: real cells with published types, never seen in pretraining."""
    return scexceiver.datasets.pbmc68k_reduced()


def test_card_records_the_data_the_command_and_the_validation_error():
    card = scexceiver.pretrained.pbmc_card()
    assert card["command"].startswith("python scripts/make_pretrained.py")
    assert card["sources"] == {
        "kang2018_ctrl": KANG_CTRL,
        "kang2018_stim": KANG_STIM,
        "10x_pbmc3k": PBMC3K,
    }
    validation = card["validation"]
    assert validation["masked_mse"] < 0.6 * validation["gene_mean_mse"]
    zero_shot = card["pbmc68k_reduced_zero_shot"]
    assert zero_shot["masked_mse"] < zero_shot["gene_mean_mse"]


def test_the_model_loads_without_data_with_its_vocabulary(reference):
    card = scexceiver.pretrained.pbmc_card()
    assert reference.adata is None
    assert reference.module.is_fitted
    assert len(reference.gene_vocabulary_) == card["n_genes"]
    assert {"CD3E", "MS4A1", "LYZ", "CD14", "NKG7"} <= set(reference.gene_vocabulary_.keys)
    embeddings = reference.get_gene_embeddings()
    assert embeddings.shape == (card["n_genes"], 64)
    assert np.isfinite(embeddings).all()


def test_zero_shot_embeddings_of_unseen_cells_separate_their_types(reference, unseen):
    labels = unseen.obs["bulk_labels"].astype(str).to_numpy()
    overlap = reference.align_genes(unseen)
    assert overlap.n_shared == 762  # of its 765 genes; the other 3 are new to the model
    zero_shot = reference.get_latent_representation(unseen.copy())
    query = ExceiverModel.load_query_data(unseen.copy(), reference)
    assert len(query.gene_vocabulary_) == len(reference.gene_vocabulary_) + 3
    mapped = query.get_latent_representation()
    assert zero_shot.shape == mapped.shape == (unseen.n_obs, 16 * 64)
    knn = scexceiver.tl.knn_label_accuracy(zero_shot, labels)
    shuffled = scexceiver.tl.knn_label_accuracy(
        zero_shot, np.random.default_rng(0).permutation(labels)
    )
    # measured: 0.739 (majority 0.343, shuffled labels 0.267; PCA fitted on these very
    # cells 0.804) from 5% of the vocabulary
    assert knn["accuracy"] > knn["majority"] + 0.3
    assert knn["accuracy"] > shuffled["accuracy"] + 0.3
    # three fresh gene embeddings barely move the query model's embedding (measured 0.734)
    assert (
        abs(scexceiver.tl.knn_label_accuracy(mapped, labels)["accuracy"] - knn["accuracy"]) < 0.03
    )
