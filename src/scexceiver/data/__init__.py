"""Data path: gene statistics, vocabulary, and tokenisation of sparse cells."""

from ._corpus import open_h5ad_corpus
from ._loader import ExceiverDataLoader, ExceiverDataSplitter
from ._sampler import LengthGroupedSampler
from ._stats import GeneStatistics, gene_statistics
from ._tokenize import collate_tokens, tokenize_counts
from ._vocab import GeneVocabulary

__all__ = [
    "ExceiverDataLoader",
    "ExceiverDataSplitter",
    "GeneStatistics",
    "GeneVocabulary",
    "LengthGroupedSampler",
    "collate_tokens",
    "gene_statistics",
    "open_h5ad_corpus",
    "tokenize_counts",
]
