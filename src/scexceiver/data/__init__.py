"""Data path: gene statistics, vocabulary, and tokenisation of sparse cells."""

from ._loader import ExceiverDataLoader, ExceiverDataSplitter
from ._stats import GeneStatistics, gene_statistics
from ._tokenize import collate_tokens, tokenize_counts
from ._vocab import GeneOverlap, GeneVocabulary

__all__ = [
    "ExceiverDataLoader",
    "ExceiverDataSplitter",
    "GeneOverlap",
    "GeneStatistics",
    "GeneVocabulary",
    "collate_tokens",
    "gene_statistics",
    "tokenize_counts",
]
