"""Pretrained Exceiver models shipped inside the package (no downloads)."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from .model import ExceiverModel

__all__ = ["pbmc", "pbmc_card"]


def _folder(name: str) -> Path:
    folder = Path(str(files("scexceiver") / "_bundled" / f"pretrained_{name}"))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"The pretrained model {name!r} is not in this installation ({folder}); "
            "reinstall scexceiver from a wheel or a full source checkout."
        )
    return folder


def pbmc(accelerator: str = "auto", device: int | str = "auto") -> ExceiverModel:
    """Load the Exceiver (default preset) pretrained on real human PBMC counts.

    The model was trained by ``scripts/make_pretrained.py`` (in the scexceiver
    repository) on every cell of the 10x PBMC 3k data and of the Kang et al. (2018)
    control and IFN-beta stimulated PBMCs (16,699 cells), on the 14,030 gene symbols
    measured in both panels, for 20 epochs on a CPU, with the squared error on
    standardised values (``loss_space="standardised"``, the default preset's loss at
    the time, recorded in the model). Its vocabulary is gene symbols, so
    query data must have symbols in ``var_names`` (or pass their ``var`` column as
    ``gene_key`` when setting up the query). :func:`pbmc_card` gives the exact command,
    the data provenance and the validation metrics.

    Parameters
    ----------
    accelerator, device
        Where to put the model (scvi-tools conventions).

    Returns
    -------
    ExceiverModel
        The model, loaded without data: pass it to
        :meth:`~scexceiver.ExceiverModel.load_query_data` to embed new data zero-shot or
        to continue pretraining, or to
        :meth:`~scexceiver.ExceiverPredictor.from_pretrained` to fine-tune a predictor.

    Examples
    --------
    >>> reference = scexceiver.pretrained.pbmc()
    >>> query = scexceiver.ExceiverModel.load_query_data(adata, reference)
    >>> adata.obsm["X_exceiver"] = query.get_latent_representation()
    """
    return ExceiverModel.load(_folder("pbmc"), accelerator=accelerator, device=device)


def pbmc_card() -> dict:
    """How the model of :func:`pbmc` was made and how well it reconstructs.

    Returns
    -------
    dict
        ``command`` (that trained it), ``sources`` (cells per source), ``n_genes``,
        ``epochs``, ``validation`` (masked-gene MSE on the held-out 10% of the training
        cells, and the gene-mean baseline on the same masks),
        ``pbmc68k_reduced_zero_shot`` (the same on PBMC 68k-reduced, never seen in
        training), ``train_seconds``, ``platform`` and ``torch``.
    """
    return json.loads((_folder("pbmc") / "metrics.json").read_text())
