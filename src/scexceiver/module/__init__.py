"""Pure torch building blocks of Exceiver (no AnnData, no model classes)."""

from ._adversary import BatchAdversary
from ._attention import Attention, CrossAttentionBlock
from ._bottleneck import GaussianLatents
from ._conditioning import BatchConditioning
from ._exceiver import Exceiver
from ._freeze import freeze_reference
from ._masking import draw_masked_tokens, lookup_counts
from ._module import ExceiverModule, batch_level_shifts, batch_standardisation, thin_counts
from ._normalize import ExpressionNormalizer
from ._predictor import ExceiverPredictorModule
from ._select import keep_top_genes

__all__ = [
    "Attention",
    "BatchAdversary",
    "BatchConditioning",
    "CrossAttentionBlock",
    "Exceiver",
    "ExceiverModule",
    "ExceiverPredictorModule",
    "ExpressionNormalizer",
    "GaussianLatents",
    "batch_level_shifts",
    "batch_standardisation",
    "draw_masked_tokens",
    "freeze_reference",
    "keep_top_genes",
    "lookup_counts",
    "thin_counts",
]
