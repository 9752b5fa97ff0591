"""Training plans and checkpointing for Exceiver."""

from ._checkpoint import PeriodicCheckpoint
from ._plan import ExceiverTrainingPlan
from ._predictor_plan import ExceiverPredictorTrainingPlan

__all__ = ["ExceiverPredictorTrainingPlan", "ExceiverTrainingPlan", "PeriodicCheckpoint"]
