"""Freezing a pretrained Exceiver except the genes (and batches) new to it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Parameters indexed by gene, and the axis of the gene index.
GENE_AXES = {
    "network.gene_embedding.weight": 0,
    "network.encoder_gene_embedding.weight": 0,
    "network.output_bias": 1,
    "network.batch_output_bias": 2,
}


def freeze_reference(
    module: nn.Module, n_reference_genes: int, trainable: tuple[str, ...] = ()
) -> Callable[[], None]:
    """Freeze everything but the genes after ``n_reference_genes`` (and ``trainable``).

    Parameters other than the gene table and the per-gene output biases stop requiring
    gradients. The gene-indexed parameters keep training, but their first
    ``n_reference_genes`` entries are restored before every look-up of the gene table, so
    only the new genes' embeddings and biases change (exactly, whatever the optimiser's
    weight decay or momentum do to the frozen entries).

    Parameters
    ----------
    module
        An :class:`~scexceiver.module.ExceiverModule` whose vocabulary extends a
        reference vocabulary of ``n_reference_genes`` genes.
    n_reference_genes
        Genes of the reference, the first entries of the gene table.
    trainable
        Names of further parameters to keep training (e.g. a new batch embedding).

    Returns
    -------
    Callable
        Restores the frozen entries now; call it after the last optimiser step so the
        stored parameters hold them too (:meth:`~scexceiver.ExceiverModel.train` does).
    """
    parameters = dict(module.named_parameters())
    for name, parameter in parameters.items():
        parameter.requires_grad_(name in GENE_AXES or name in trainable)
    frozen = {
        name: parameters[name].detach().narrow(axis, 0, n_reference_genes).clone()
        for name, axis in GENE_AXES.items()
        if name in parameters
    }

    @torch.no_grad()
    def restore(*_hook_args) -> None:
        for name, values in frozen.items():
            parameters[name].narrow(GENE_AXES[name], 0, n_reference_genes).copy_(values)

    # every encode and decode looks a gene table up before using any gene tensor, so
    # inference after the last optimiser step also sees the frozen values
    for table in (module.network.gene_embedding, module.network.encoder_gene_embedding):
        if table is not None:
            table.register_forward_pre_hook(restore)
    return restore
