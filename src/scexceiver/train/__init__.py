"""Training plan for Exceiver."""

from ._plan import ExceiverTrainingPlan

__all__ = ["ExceiverTrainingPlan"]
