"""scvi-tools model classes (the only place that touches scvi-tools' registry)."""

from ._model import ExceiverModel
from ._predictor import ExceiverPredictor

__all__ = ["ExceiverModel", "ExceiverPredictor"]
