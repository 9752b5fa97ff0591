"""AnnData fields of scexceiver models."""

from __future__ import annotations

from scvi.data.fields import LayerField, MuDataWrapper


class GenePanelLayerField(LayerField):
    """A counts :class:`~scvi.data.fields.LayerField` that accepts another gene panel.

    scvi-tools requires data given to a trained model to have the training data's number
    of genes. Exceiver models align genes through their vocabulary instead (see
    :meth:`~scexceiver.ExceiverModel.align_genes`), so transferring the setup to data with
    a different, permuted, smaller or larger panel is allowed here.
    """

    def transfer_field(self, state_registry: dict, adata_target, **kwargs) -> dict:
        """Register the counts of ``adata_target`` whatever its number of genes."""
        return self.register_field(adata_target)


MuDataGenePanelLayerField = MuDataWrapper(GenePanelLayerField)
