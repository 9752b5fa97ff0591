"""Data path: gene statistics, vocabulary, and tokenisation of sparse cells."""

from ._blocks import BlockCache, ChunkedReadDataset
from ._chunks import ChunkNeighbourhoodSampler, ChunkShuffleSampler
from ._corpus import open_h5ad_corpus
from ._loader import ExceiverDataLoader, ExceiverDataSplitter
from ._neighbourhoods import NeighbourhoodSampler, nearest_cells
from ._sampler import LengthGroupedSampler
from ._stats import GeneStatistics, gene_statistics
from ._tokenize import collate_tokens, tokenize_counts
from ._validate import (
    CountsSummary,
    check_counts,
    check_obs_key,
    counts_matrix,
    gene_keys,
    validate_setup,
)
from ._vocab import GeneOverlap, GeneVocabulary

__all__ = [
    "BlockCache",
    "ChunkNeighbourhoodSampler",
    "ChunkShuffleSampler",
    "ChunkedReadDataset",
    "CountsSummary",
    "ExceiverDataLoader",
    "ExceiverDataSplitter",
    "GeneOverlap",
    "GeneStatistics",
    "GeneVocabulary",
    "LengthGroupedSampler",
    "NeighbourhoodSampler",
    "check_counts",
    "check_obs_key",
    "collate_tokens",
    "counts_matrix",
    "gene_keys",
    "gene_statistics",
    "nearest_cells",
    "open_h5ad_corpus",
    "tokenize_counts",
    "validate_setup",
]
