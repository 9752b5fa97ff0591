"""The gene vocabulary: stable gene keys and alignment of other panels onto them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class GeneVocabulary:
    """Ordered, unique gene keys (``var_names`` or a ``var`` column such as Ensembl IDs).

    Parameters
    ----------
    keys
        Gene keys in the model's order; must be unique.
    """

    keys: tuple[str, ...]

    def __post_init__(self) -> None:
        duplicated = pd.Index(self.keys)[pd.Index(self.keys).duplicated()]
        if len(duplicated):
            raise ValueError(
                f"Gene keys must be unique; duplicated: {list(duplicated[:5])}. Make them "
                "unique (adata.var_names_make_unique()) or pass gene_key= a unique var column."
            )

    @classmethod
    def from_keys(cls, keys: Sequence[str]) -> GeneVocabulary:
        """Build a vocabulary from any sequence of keys."""
        return cls(tuple(str(k) for k in keys))

    def __len__(self) -> int:
        return len(self.keys)

    def positions(self, keys: Sequence[str]) -> np.ndarray:
        """Vocabulary position of each key, -1 where a key is not in the vocabulary."""
        return pd.Index(self.keys).get_indexer(pd.Index([str(k) for k in keys]))
