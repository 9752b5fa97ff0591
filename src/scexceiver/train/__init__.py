"""Training plans for Exceiver."""

from ._plan import ExceiverTrainingPlan
from ._predictor_plan import ExceiverPredictorTrainingPlan

__all__ = ["ExceiverPredictorTrainingPlan", "ExceiverTrainingPlan"]
