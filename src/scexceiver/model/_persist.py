"""Saving and loading models: safetensors weights, JSON metadata, atomic folder writes.

scvi-tools' own ``save`` pickles the registry and the model's attributes with
``torch.save``, and its ``load`` unpickles them, which runs whatever code a model folder
holds. Here the weights are a safetensors file (tensors only) and everything else is
plain JSON, so loading a model from a colleague executes nothing. A folder is written
beside its target and renamed into place, and a checksum of the weights is kept, so a
half-written, truncated or modified model is refused with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anndata
import mudata
import numpy as np
import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scvi.model._utils import parse_device_args

from scexceiver.data import GeneVocabulary
from scexceiver.data._validate import registered_gene_keys
from scexceiver.model._presets import ADDED_ARGUMENTS

FORMAT = "scexceiver-model"
#: Bumped when a saved folder changes in a way older readers cannot load.
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
METADATA = "metadata.json"
ANNDATA = {"setup_anndata": "adata.h5ad", "setup_mudata": "mdata.h5mu"}
#: Model attributes saved besides the weights (all of them JSON-encodable).
ATTRIBUTES = ("is_trained_", "train_indices_", "validation_indices_", "test_indices_", "history_")


def save_model(
    model, dir_path: str | Path, *, overwrite: bool, save_anndata: bool, **anndata_write_kwargs
) -> None:
    """Write ``model`` to ``dir_path`` atomically (see :meth:`ExceiverModel.save`)."""
    target = Path(dir_path)
    _check_target(target, overwrite)
    state = {
        name: tensor.detach().cpu().contiguous().clone()
        for name, tensor in model.module.state_dict().items()
    }
    method = model.registry_.get("setup_method_name", "setup_anndata")
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "scexceiver_version": _version("scexceiver"),
        "scvi_tools_version": _version("scvi-tools"),
        "torch_version": torch.__version__,
        "model_class": type(model).__name__,
        "preset": model.preset,
        "init_params": to_json(model.init_params_),
        "registry": to_json(model.registry_),
        "gene_vocabulary": list(model.gene_vocabulary_.keys),
        "attributes": to_json({name: getattr(model, name) for name in ATTRIBUTES}),
        "anndata_file": ANNDATA[method] if save_anndata else None,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.saving-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        _write_weights(state, staging / WEIGHTS)
        metadata["weights_sha256"] = _sha256(staging / WEIGHTS)
        _write_text(staging / METADATA, json.dumps(metadata, indent=1, allow_nan=False))
        if save_anndata:
            model.adata.write(staging / ANNDATA[method], **anndata_write_kwargs)
        _replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_model(cls, dir_path: str | Path, adata=None, *, accelerator: str, device: int | str):
    """Rebuild a model saved by :func:`save_model` (see :meth:`ExceiverModel.load`)."""
    path = Path(dir_path)
    metadata = read_metadata(path)
    if metadata["model_class"] != cls.__name__:
        raise ValueError(
            f"{path} holds a {metadata['model_class']}, not a {cls.__name__}; load it with "
            f"{metadata['model_class']}.load."
        )
    state = _read_weights(path, metadata["weights_sha256"])
    registry = from_json(metadata["registry"])
    vocabulary = GeneVocabulary.from_keys(metadata["gene_vocabulary"])
    if adata is None and metadata["anndata_file"] is not None:
        adata = _read_anndata(path / metadata["anndata_file"])
    if adata is not None:
        vocabulary.align(
            registered_gene_keys(adata, registry["setup_args"]), min_overlap=cls.min_gene_overlap
        )
        setup = getattr(cls, registry.get("setup_method_name", "setup_anndata"))
        setup(adata, source_registry=registry, **registry["setup_args"])
    init_params = from_json(metadata["init_params"])
    kwargs = {k: v for group in init_params["kwargs"].values() for k, v in group.items()}
    if "model_kwargs" in init_params["kwargs"]:  # a saved configuration lacks newer arguments
        kwargs = {**ADDED_ARGUMENTS, **kwargs}
    non_kwargs = {**init_params["non_kwargs"], "gene_vocabulary": list(vocabulary.keys)}
    model = cls(adata, registry=registry if adata is None else None, **non_kwargs, **kwargs)
    for name, value in from_json(metadata["attributes"]).items():
        setattr(model, name, value)
    try:
        model.module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"The weights in {path / WEIGHTS} do not fit the saved model configuration; the "
            f"folder was modified after saving. ({err})"
        ) from err
    _, _, torch_device = parse_device_args(
        accelerator=accelerator,
        devices=device,
        return_device="torch",
        validate_single_device=True,
    )
    model.to_device(torch_device)
    model.module.eval()
    if adata is not None:
        model._validate_anndata(adata)
    return model


def read_metadata(path: Path) -> dict:
    """The checked contents of ``metadata.json`` of a saved model folder.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a folder.
    ValueError
        If the metadata are missing, not JSON, of another format, or written by a newer
        incompatible scexceiver.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"No saved model at {path}: the folder does not exist.")
    meta_path = path / METADATA
    if not meta_path.is_file():
        if (path / "model.pt").is_file():
            raise ValueError(
                f"{path} holds a pickled scvi-tools model (model.pt). scexceiver does not "
                "load pickles, which can execute code; re-save the model with the version "
                "that wrote it, or load it with scvi-tools if you trust its source."
            )
        raise ValueError(f"{path} is not a saved scexceiver model: {METADATA} is missing.")
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{meta_path} is not valid JSON ({err}); the model folder is truncated or was "
            "modified after saving."
        ) from err
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"{meta_path} does not describe a saved scexceiver model.")
    saved_version = metadata.get("format_version")
    if not isinstance(saved_version, int):
        raise ValueError(f"{meta_path} has no valid format_version; the folder was modified.")
    if saved_version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was saved by scexceiver {metadata.get('scexceiver_version')} in model "
            f"format {saved_version}; this scexceiver ({_version('scexceiver')}) reads formats "
            f"up to {FORMAT_VERSION}. Upgrade scexceiver (pip install -U scexceiver)."
        )
    required = {
        "model_class",
        "preset",
        "init_params",
        "registry",
        "gene_vocabulary",
        "attributes",
        "anndata_file",
        "weights_sha256",
    }
    missing = sorted(required - set(metadata))
    if missing:
        raise ValueError(f"{meta_path} lacks {missing}; the folder was modified after saving.")
    return metadata


def to_json(value: Any) -> Any:
    """Encode ``value`` as JSON-compatible data that :func:`from_json` restores exactly.

    Numpy arrays keep their dtype, data frames (of numeric or string columns) their
    index, columns and dtypes, non-finite floats their value; tuples become lists.

    Raises
    ------
    TypeError
        For values with no faithful JSON form (e.g. arbitrary objects).
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufUO":
            raise TypeError(f"Cannot save an array of dtype {value.dtype} as JSON.")
        return {"__ndarray__": to_json(value.tolist()), "dtype": value.dtype.str}
    if isinstance(value, pd.DataFrame):
        return {
            "__dataframe__": {
                "columns": to_json(list(value.columns)),
                "index": to_json(list(value.index)),
                "index_name": to_json(value.index.name),
                "data": to_json(value.to_numpy().tolist()),
                "dtypes": [dtype.str for dtype in value.dtypes],
            }
        }
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"Cannot save a dict with non-string keys as JSON: {list(value)}.")
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    raise TypeError(f"Cannot save a value of type {type(value).__name__} as JSON.")


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json`."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__float__" in value:
        return float(value["__float__"])
    if "__ndarray__" in value:
        dtype = np.dtype(value["dtype"])
        items = from_json(value["__ndarray__"])
        if dtype.kind == "O":
            array = np.empty(len(items), dtype=object)
            array[:] = items
            return array
        return np.asarray(items, dtype=dtype)
    if "__dataframe__" in value:
        frame = from_json(value["__dataframe__"])
        index = pd.Index(frame["index"], name=frame["index_name"])
        data = pd.DataFrame(frame["data"], index=index, columns=frame["columns"])
        dtypes = [np.dtype(d) for d in frame["dtypes"]]
        return data.astype(dict(zip(frame["columns"], dtypes, strict=True)))
    return {k: from_json(v) for k, v in value.items()}


def _check_target(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not overwrite:
        raise FileExistsError(
            f"{target} already exists; pass overwrite=True to replace it, or choose another "
            "folder."
        )
    is_model = target.is_dir() and (
        (target / METADATA).is_file() or (target / "model.pt").is_file()
    )
    if not (is_model or (target.is_dir() and not any(target.iterdir()))):
        raise FileExistsError(
            f"{target} exists and is not a saved model; it is not replaced even with "
            "overwrite=True. Choose another folder."
        )


def _replace(staging: Path, target: Path) -> None:
    """Move the finished ``staging`` folder to ``target``, keeping the old one until done."""
    if not target.exists():
        os.replace(staging, target)
        return
    backup = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex}"
    os.replace(target, backup)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _write_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file(state, str(path), metadata={"format": FORMAT})
    _fsync(path)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    _fsync(path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _read_weights(path: Path, expected_sha256: str) -> dict[str, torch.Tensor]:
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ValueError(f"{weights} is missing; the model folder is incomplete.")
    if _sha256(weights) != expected_sha256:
        raise ValueError(
            f"{weights} does not match the checksum recorded when the model was saved; it "
            "is truncated or was modified. Copy the model folder again from its source."
        )
    try:
        return load_file(str(weights), device="cpu")
    except SafetensorError as err:
        raise ValueError(f"{weights} is not a readable safetensors file ({err}).") from err


def _read_anndata(path: Path):
    if not path.is_file():
        raise ValueError(f"{path} is missing; the model was saved with its data.")
    if path.suffix == ".h5mu":
        return mudata.read_h5mu(path)
    return anndata.read_h5ad(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
