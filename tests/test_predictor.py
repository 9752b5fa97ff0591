import numpy as np
import pandas as pd
import pytest
import scvi

from scexceiver import ExceiverPredictor


@pytest.fixture(scope="module")
def split(trained):
    """Disjoint fine-tuning and held-out cells of PBMC 3k; a third of training unlabelled."""
    _, adata = trained
    rng = np.random.default_rng(0)
    order = rng.permutation(adata.n_obs)
    train = adata[np.sort(order[:900])].copy()
    held_out = adata[np.sort(order[900:1500])].copy()
    labels = train.obs["cell_type"].astype(str).to_numpy()
    labels[rng.random(labels.size) < 1 / 3] = "unknown"
    train.obs["label"] = labels
    del held_out.obs["cell_type"]
    return train, held_out, adata.obs["cell_type"].iloc[np.sort(order[900:1500])].to_numpy()


@pytest.fixture(scope="module")
def fine_tuned(trained, split):
    model, _ = trained
    train, _, _ = split
    scvi.settings.seed = 0
    predictor = ExceiverPredictor.from_pretrained(model, train, labels_key="label", ce_weight=5.0)
    predictor.train(max_epochs=12, lr=1e-3, warmup_steps=10, batch_size=64, early_stopping=False)
    return predictor


def test_fine_tuned_predictor_beats_the_majority_class(fine_tuned, split):
    _, held_out, truth = split
    predicted = fine_tuned.predict(held_out)
    accuracy = float(np.mean(predicted == truth))
    majority = pd.Series(truth).value_counts(normalize=True).iloc[0]
    print(f"held-out accuracy {accuracy:.3f}, majority {majority:.3f}")
    # measured 0.773 (one suite run) and 0.667 (another, other tests and thread counts
    # before it) vs a majority rate of 0.423; ce_weight 1 for 8-12 epochs: 0.48-0.60. The
    # short fine-tune is sensitive to float noise (benchmarks/transfer.py shows its spread)
    assert accuracy > majority + 0.2
    soft = fine_tuned.predict(held_out, soft=True)
    assert list(soft.columns) == list(fine_tuned.classes) and "unknown" not in soft.columns
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(soft.to_numpy().argmax(1), soft.columns.get_indexer(predicted))


def test_predictions_are_identical_after_reload(fine_tuned, split, tmp_path):
    train, held_out, _ = split
    fine_tuned.save(tmp_path / "predictor", save_anndata=False)
    loaded = ExceiverPredictor.load(tmp_path / "predictor", adata=train)
    pd.testing.assert_frame_equal(
        loaded.predict(held_out, soft=True), fine_tuned.predict(held_out, soft=True)
    )
    assert loaded.task == "classification" and loaded.gene_vocabulary_ == (
        fine_tuned.gene_vocabulary_
    )


def test_options_class_balance_scratch_and_regression(trained, split):
    model, _ = trained
    train, held_out, _ = split
    labels = train.obs["label"]
    balanced = ExceiverPredictor.from_pretrained(
        model, train.copy(), labels_key="label", class_balanced=True, ce_weight=0.5
    )
    counts = labels[labels != "unknown"].value_counts().reindex(balanced.classes)
    expected = counts.sum() / (len(counts) * counts.to_numpy())
    np.testing.assert_allclose(balanced.module.class_weights.numpy(), expected, rtol=1e-6)
    assert balanced.module.ce_weight == 0.5
    scratch = ExceiverPredictor.from_pretrained(
        model, train.copy(), labels_key="label", init="scratch"
    )
    assert not scratch.module.is_fitted
    table = model.module.network.gene_embedding.weight
    assert not np.allclose(scratch.module.network.gene_embedding.weight.detach(), table.detach())
    regression = train.copy()
    regression.obs["depth"] = np.log1p(np.asarray(regression.X.sum(1)).ravel())
    regression.obs.loc[regression.obs_names[:100], "depth"] = np.nan
    regressor = ExceiverPredictor.from_pretrained(model, regression, labels_key="depth")
    assert regressor.task == "regression"
    labelled = regression.obs["depth"].dropna()
    assert float(regressor.module.target_mean) == pytest.approx(labelled.mean(), rel=1e-5)
    values = regressor.predict(held_out[:50].copy())
    assert values.shape == (50,) and np.isfinite(values).all()
    with pytest.raises(ValueError, match="missing values"):
        nan_labels = train.copy()
        nan_labels.obs["label"] = nan_labels.obs["label"].replace("unknown", np.nan)
        ExceiverPredictor.from_pretrained(model, nan_labels, labels_key="label")
    with pytest.raises(ValueError, match="init"):
        ExceiverPredictor.from_pretrained(model, train.copy(), labels_key="label", init="x")
