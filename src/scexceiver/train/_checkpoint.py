"""Periodic training checkpoints and resolution of the checkpoint to resume from."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

LAST = "last.ckpt"


class PeriodicCheckpoint(Callback):
    """Save a full training checkpoint at the end of every ``every_n_epochs`` epochs.

    A checkpoint is Lightning's: module weights and statistics, optimiser and scheduler
    states, loop progress, callback states and (through
    :class:`~scexceiver.train.ExceiverTrainingPlan`) torch's global RNG state. Each
    one is written as ``epoch=E-step=S.ckpt`` and copied to ``last.ckpt``; only
    global rank 0 writes. Checkpoints are taken at epoch ends, where resuming
    reproduces the uninterrupted run exactly.

    Parameters
    ----------
    dirpath
        Directory of the checkpoints (created if missing).
    every_n_epochs
        Save after every this many epochs (and after the last one).
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save when the epoch count is a multiple of ``every_n_epochs`` or training ends."""
        epoch = trainer.current_epoch + 1
        last_epoch = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last_epoch:
            return
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"epoch={trainer.current_epoch}-step={trainer.global_step}.ckpt"
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            tmp = self.dirpath / f".{LAST}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, self.dirpath / LAST)
        trainer.strategy.barrier("PeriodicCheckpoint")


def resolve_resume(
    resume_from: str | os.PathLike | None, checkpoint_dir: str | os.PathLike | None
) -> str | None:
    """Path of the checkpoint to resume from, checked to exist.

    Parameters
    ----------
    resume_from
        A ``.ckpt`` path, ``"last"`` (``last.ckpt`` in ``checkpoint_dir``) or ``None``.
    checkpoint_dir
        Directory of periodic checkpoints (needed for ``"last"``).
    """
    if resume_from is None:
        return None
    if str(resume_from) == "last":
        if checkpoint_dir is None:
            raise ValueError('resume_from="last" needs checkpoint_dir (the directory to look in).')
        path = Path(checkpoint_dir) / LAST
    else:
        path = Path(resume_from)
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}. Pass a .ckpt file written by a run with "
            'checkpoint_dir=..., or resume_from="last" with that directory.'
        )
    return str(path)
