"""Training plan and checkpointing for Exceiver."""

from ._checkpoint import PeriodicCheckpoint
from ._plan import ExceiverTrainingPlan

__all__ = ["ExceiverTrainingPlan", "PeriodicCheckpoint"]
