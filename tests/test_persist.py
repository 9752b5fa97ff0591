"""Saving and loading: no pickles, exact round trips, atomic writes, clear refusals."""

import json
from operator import attrgetter

import numpy as np
import pandas as pd
import pytest
import scvi

from scexceiver import ExceiverModel
from scexceiver.model import _persist
from scexceiver.model._presets import ADDED_ARGUMENTS, PRESETS, resolve_preset

TINY = {"n_latents": 4, "dim": 8, "n_layers": 1, "ff_dim": 16, "head_hidden": 8, "heads": 2}


@pytest.fixture(scope="module")
def tiny(pbmc_small):
    """A tiny model trained a few steps on 150 real cells, with batch and labels."""
    scvi.settings.seed = 0
    adata = pbmc_small[:150, :400].copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 3, "p1", "p2")
    adata.obs["code"] = np.arange(adata.n_obs) % 4  # integer labels: an int64 mapping
    ExceiverModel.setup_anndata(adata, batch_key="batch", labels_key="code")
    model = ExceiverModel(adata, **TINY)
    model.train(max_epochs=2, batch_size=32, check_val_every_n_epoch=1, enable_progress_bar=False)
    return model, adata


@pytest.fixture(scope="module")
def tiny_old(tiny):
    """The tiny model as a release before the added arguments trained it (all off)."""
    scvi.settings.seed = 0
    adata = tiny[1].copy()
    ExceiverModel.setup_anndata(adata, batch_key="batch", labels_key="code")
    model = ExceiverModel(adata, **TINY, **ADDED_ARGUMENTS)
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    return model, adata


#: The default's batch-dependent arguments as resolved for the tiny model's two batches.
RESOLVED = {
    "batch_standardise": True,
    "input_thinning": 0.8,
    "neighbour_preservation": 3.0,
    "tie_gene_embeddings": False,
}


def _equal(a, b):
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, pd.DataFrame):
        return a.equals(b) and a.index.name == b.index.name
    return type(a) is type(b) and a == b


def test_folder_holds_safetensors_and_json_only(tiny, tmp_path):
    model, _ = tiny
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "metadata.json",
        "model.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left behind
    metadata = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert metadata["format_version"] == _persist.FORMAT_VERSION
    assert metadata["gene_vocabulary"] == list(model.gene_vocabulary_.keys)
    assert metadata["preset"] == "default" and metadata["scvi_tools_version"] == scvi.__version__
    # recorded resolved: batch_standardise=None means "two or more batches", as here
    expected = resolve_preset("default", **TINY) | RESOLVED
    assert metadata["init_params"]["kwargs"]["model_kwargs"] == expected


def test_round_trip_with_and_without_anndata(tiny, tmp_path):
    model, adata = tiny
    model.save(tmp_path / "m")
    z = model.get_latent_representation()
    loaded = ExceiverModel.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    assert _equal(loaded.registry_, model.registry_)
    assert _equal(ExceiverModel.load_registry(tmp_path / "m"), model.registry_)
    assert loaded.gene_vocabulary_ == model.gene_vocabulary_
    assert _equal(loaded.history, model.history)
    np.testing.assert_array_equal(loaded.train_indices, model.train_indices)
    assert loaded.is_trained and loaded.preset == "default"
    for name, tensor in model.module.state_dict().items():
        assert tensor.equal(loaded.module.state_dict()[name]), name
    # without data: the saved registry sets up the data given later
    bare = ExceiverModel.load(tmp_path / "m")
    assert bare.adata is None
    np.testing.assert_array_equal(bare.get_latent_representation(adata.copy()), z)
    # with the data saved beside the model
    model.save(tmp_path / "with_data", save_anndata=True)
    restored = ExceiverModel.load(tmp_path / "with_data")
    assert restored.adata.shape == adata.shape
    np.testing.assert_array_equal(restored.get_latent_representation(), z)


def test_a_saved_model_keeps_its_configuration_when_a_preset_changes(tiny, tmp_path, monkeypatch):
    model, adata = tiny
    expected = resolve_preset("default", **TINY) | RESOLVED
    assert model.init_params_["kwargs"]["model_kwargs"] == expected
    model.save(tmp_path / "m")
    # a later release changes the default preset: the saved model must load as trained
    monkeypatch.setitem(PRESETS["default"], "loss_space", "standardised")
    monkeypatch.setitem(PRESETS["default"], "n_visible_queries", 7)
    loaded = ExceiverModel.load(tmp_path / "m", adata=adata)
    assert loaded.module.loss_space == model.module.loss_space == "log"
    assert loaded.module.n_visible_queries == model.module.n_visible_queries == 128
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )


@pytest.mark.parametrize(
    ("argument", "value", "part"),
    [
        ("batch_adversary", 0.5, "adversary"),
        ("latent_kl", 0.5, "bottleneck"),
        ("batch_standardise", True, "normalizer.batch_mean"),
        ("batch_output_bias", True, "network.batch_output_bias"),
        ("batch_context", True, "network.batch_context"),
        ("tie_gene_embeddings", False, "network.encoder_gene_embedding"),
    ],
)
def test_a_model_saved_before_an_argument_existed_loads_without_it(
    tiny_old, tmp_path, monkeypatch, argument, value, part
):
    model, adata = tiny_old
    model.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["init_params"]["kwargs"]["model_kwargs"][argument]  # an older release
    meta_path.write_text(json.dumps(meta))
    # the preset now turns the part on; the old model has no weights for it
    monkeypatch.setitem(PRESETS["default"], argument, value)
    old_settings = {k: v for k, v in ADDED_ARGUMENTS.items() if k != argument}
    assert attrgetter(part)(ExceiverModel(adata, **TINY, **old_settings).module) is not None
    loaded = ExceiverModel.load(tmp_path / "m", adata=adata)
    assert attrgetter(part)(loaded.module) is None
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )


def test_a_model_saved_before_depth_augmentation_loads_without_it(tiny, tiny_old, tmp_path):
    model, adata = tiny
    model.save(tmp_path / "new")
    meta = json.loads((tmp_path / "new" / "metadata.json").read_text())
    assert meta["init_params"]["kwargs"]["model_kwargs"]["input_thinning"] == 0.8
    model, adata = tiny_old
    model.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["init_params"]["kwargs"]["model_kwargs"]["input_thinning"]  # an older release
    meta_path.write_text(json.dumps(meta))
    loaded = ExceiverModel.load(tmp_path / "m", adata=adata)
    assert loaded.module.input_thinning == 0.0
    assert ExceiverModel(adata, **TINY).module.input_thinning == 0.8


def test_json_encoding_restores_registry_values_exactly():
    value = {
        "names": np.array(["a", "b"], dtype=object),
        "codes": np.array([3, 1], dtype=np.int64),
        "floats": np.array([0.5, np.nan], dtype=np.float32),
        "nested": {"none": None, "flag": True, "tuple": (1, 2.5), "inf": float("-inf")},
        "history": pd.DataFrame({"loss": [1.0, np.nan]}, index=pd.Index([0, 1], name="epoch")),
    }
    text = json.dumps(_persist.to_json(value), allow_nan=False)
    restored = _persist.from_json(json.loads(text))
    assert _equal(restored["names"], value["names"]) and _equal(restored["codes"], value["codes"])
    assert restored["floats"].dtype == np.float32 and np.isnan(restored["floats"][1])
    assert restored["nested"] == {"none": None, "flag": True, "tuple": [1, 2.5], "inf": -np.inf}
    assert _equal(restored["history"], value["history"])
    with pytest.raises(TypeError, match="type object"):
        _persist.to_json({"x": object()})


def test_save_refuses_to_overwrite_unless_asked(tiny, tmp_path):
    model, _ = tiny
    model.save(tmp_path / "m")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a saved model"):
        model.save(other, overwrite=True)
    assert (other / "thesis.txt").read_text() == "years of work"


@pytest.mark.parametrize("stage", ["weights", "rename"])
def test_crash_mid_save_leaves_the_previous_model_intact(tiny, tmp_path, monkeypatch, stage):
    model, adata = tiny
    model.save(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    if stage == "weights":
        monkeypatch.setattr(_persist, "_write_weights", crash)
    else:  # the old model has been moved aside when the new one fails to move in
        real_replace = _persist.os.replace
        calls = []

        def replace(src, dst):
            calls.append(src)
            if len(calls) == 2:
                crash()
            real_replace(src, dst)

        monkeypatch.setattr(_persist.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        model.save(tmp_path / "m", overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    loaded = ExceiverModel.load(tmp_path / "m", adata=adata)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )


def _edit_json(path, **changes):
    metadata = json.loads(path.read_text())
    metadata.update(changes)
    path.write_text(json.dumps(metadata))


def test_tampered_or_truncated_folders_raise_clear_errors(tiny, tmp_path):
    model, adata = tiny
    model.save(tmp_path / "m")
    weights = (tmp_path / "m" / "model.safetensors").read_bytes()
    meta = (tmp_path / "m" / "metadata.json").read_text()

    def broken(name, edit):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(weights)
        (folder / "metadata.json").write_text(meta)
        edit(folder)
        return folder

    cases = {
        "truncated_weights": (
            lambda f: (f / "model.safetensors").write_bytes(weights[: len(weights) // 2]),
            "checksum .*truncated or was modified",
        ),
        "bad_json": (
            lambda f: (f / "metadata.json").write_text(meta[:-20]),
            "not valid JSON",
        ),
        "no_weights": (lambda f: (f / "model.safetensors").unlink(), "is missing"),
        "no_metadata": (lambda f: (f / "metadata.json").unlink(), "metadata.json is missing"),
        "pickle": (
            lambda f: [(f / "metadata.json").unlink(), (f / "model.pt").write_bytes(b"x")],
            "does not load pickles",
        ),
        "newer_format": (
            lambda f: _edit_json(f / "metadata.json", format_version=99),
            "format 99; this scexceiver .* up to 1. Upgrade",
        ),
        "missing_field": (
            lambda f: (f / "metadata.json").write_text(
                json.dumps({k: v for k, v in json.loads(meta).items() if k != "registry"})
            ),
            r"lacks \['registry'\]",
        ),
        "other_class": (
            lambda f: _edit_json(f / "metadata.json", model_class="SCVI"),
            "holds a SCVI",
        ),
        "not_safetensors": (
            lambda f: [
                (f / "model.safetensors").write_bytes(b"garbage!" * 10),
                _edit_json(
                    f / "metadata.json",
                    weights_sha256=_persist._sha256(f / "model.safetensors"),
                ),
            ],
            "not a readable safetensors",
        ),
        "wrong_shapes": (
            lambda f: _edit_json(
                f / "metadata.json",
                init_params={"kwargs": {"model_kwargs": {**TINY, "dim": 4}}, "non_kwargs": {}},
            ),
            "do not fit the saved model configuration",
        ),
    }
    for name, (edit, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            ExceiverModel.load(broken(name, edit), adata=adata)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ExceiverModel.load(tmp_path / "nowhere")


def test_load_refuses_a_different_gene_panel(tiny, tmp_path):
    model, adata = tiny
    model.save(tmp_path / "m")
    other = adata.copy()
    other.var_names = [f"other{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match=r"0 shared genes: 0.0% of the data's 400"):
        ExceiverModel.load(tmp_path / "m", adata=other)
