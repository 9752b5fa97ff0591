"""Exceiver, a single-cell gene expression language model, as an scvi-tools model."""

from importlib.metadata import PackageNotFoundError, version

import rich.pretty  # noqa: F401  (scvi-tools' view_anndata_setup needs it imported)

from . import datasets, pl, pretrained, tl
from .model import ExceiverModel, ExceiverPredictor

try:
    __version__ = version("scexceiver")
except PackageNotFoundError:
    __version__ = "0.0.0"

__all__ = ["ExceiverModel", "ExceiverPredictor", "datasets", "pl", "pretrained", "tl"]
