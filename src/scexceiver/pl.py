"""Plots (scanpy style: draw and return the axes)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.axes import Axes


def training_curves(model, *, ax: Axes | None = None) -> Axes:
    """Plot training and validation loss per epoch from ``model.history``.

    Parameters
    ----------
    model
        A trained :class:`~scexceiver.ExceiverModel`.
    ax
        Axes to draw into; a new figure by default.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    history = model.history
    for key, label in (("train_loss", "train"), ("validation_loss", "validation")):
        if key in history:
            series = history[key][key]
            ax.plot(series.index, series.to_numpy(), label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE of processed values)")
    ax.legend(frameon=False)
    return ax
