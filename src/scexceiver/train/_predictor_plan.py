"""Training plan of the predictor: the masked-expression plan plus prediction metrics."""

from __future__ import annotations

from scvi.module.base import LossOutput

from ._plan import ExceiverTrainingPlan


class ExceiverPredictorTrainingPlan(ExceiverTrainingPlan):
    """:class:`ExceiverTrainingPlan` that also logs the prediction loss and accuracy.

    ``prediction_loss_{train,validation}`` (cross-entropy, or MSE of the standardised
    target) and, for classification, ``accuracy_{train,validation}`` over labelled cells.
    All arguments are those of :class:`ExceiverTrainingPlan`.
    """

    def _log_loss(self, loss_output: LossOutput, mode: str, batch_size: int) -> None:
        super()._log_loss(loss_output, mode, batch_size)
        metrics = loss_output.extra_metrics
        n_labelled = metrics["n_labelled"].clamp(min=1)
        self.log_dict(
            {
                f"prediction_loss_{mode}": metrics["prediction_loss"],
                f"accuracy_{mode}": metrics["n_correct"] / n_labelled,
            },
            on_step=False,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=self.use_sync_dist,
        )
