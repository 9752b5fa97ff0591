"""scvi-tools model classes (the only place that touches scvi-tools' registry)."""

from ._model import ExceiverModel

__all__ = ["ExceiverModel"]
