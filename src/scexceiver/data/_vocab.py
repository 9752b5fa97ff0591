"""The gene vocabulary: stable gene keys and alignment of other panels onto them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}")


@dataclass(frozen=True)
class GeneOverlap:
    """How a gene panel maps onto a model's vocabulary.

    Attributes
    ----------
    n_shared
        Genes of the panel found in the vocabulary.
    n_panel
        Genes in the panel.
    n_vocabulary
        Genes in the vocabulary.
    """

    n_shared: int
    n_panel: int
    n_vocabulary: int

    @property
    def fraction_of_panel(self) -> float:
        """Share of the panel's genes that the vocabulary knows."""
        return self.n_shared / max(self.n_panel, 1)

    @property
    def fraction_of_vocabulary(self) -> float:
        """Share of the vocabulary that the panel measures."""
        return self.n_shared / max(self.n_vocabulary, 1)

    @property
    def fraction(self) -> float:
        """Share of the smaller of the two gene sets that the other contains.

        1 for a permutation, a subset or a superset of the vocabulary; near 0 when the
        keys are of different kinds (symbols against Ensembl IDs).
        """
        return self.n_shared / max(min(self.n_panel, self.n_vocabulary), 1)

    def __str__(self) -> str:
        return (
            f"{self.n_shared:,} shared genes: {self.fraction_of_panel:.1%} of the data's "
            f"{self.n_panel:,}, {self.fraction_of_vocabulary:.1%} of the model's "
            f"{self.n_vocabulary:,}"
        )


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

    def overlap(self, keys: Sequence[str]) -> GeneOverlap:
        """Overlap of a panel of gene ``keys`` with this vocabulary."""
        n_shared = int((self.positions(keys) >= 0).sum())
        return GeneOverlap(n_shared=n_shared, n_panel=len(keys), n_vocabulary=len(self))

    def extend(self, keys: Sequence[str]) -> GeneVocabulary:
        """The vocabulary followed by the ``keys`` it does not yet hold, in their order."""
        new = [str(k) for k, p in zip(keys, self.positions(keys), strict=True) if p < 0]
        return GeneVocabulary(self.keys + tuple(new))

    def align(
        self, keys: Sequence[str], var: pd.DataFrame | None = None, min_overlap: float = 0.5
    ) -> tuple[np.ndarray | None, GeneOverlap]:
        """Map a panel of gene ``keys`` (one per column of the data) onto the vocabulary.

        Parameters
        ----------
        keys
            The data's gene keys, in column order.
        var
            The data's ``var``; when the overlap is too small, its index and columns are
            searched for keys that would match, to name the fix in the error.
        min_overlap
            Smallest accepted :attr:`GeneOverlap.fraction`.

        Returns
        -------
        tuple
            The lookup (column -> vocabulary position, -1 for genes the vocabulary lacks),
            or ``None`` when ``keys`` are exactly the vocabulary in its order; and the
            :class:`GeneOverlap`.

        Raises
        ------
        ValueError
            If the overlap is below ``min_overlap``; the message names a ``var`` column
            (or ``var_names``) that would match, or the kind of keys each side holds.
        """
        if tuple(str(k) for k in keys) == self.keys:
            return None, GeneOverlap(len(self), len(self), len(self))
        lookup = self.positions(keys)
        overlap = GeneOverlap(int((lookup >= 0).sum()), len(lookup), len(self))
        if overlap.fraction < min_overlap:
            raise ValueError(
                f"The data's genes barely match the model's vocabulary ({overlap}; "
                f"min_gene_overlap={min_overlap}). {self._diagnose(keys, var)}"
            )
        return lookup, overlap

    def _diagnose(self, keys: Sequence[str], var: pd.DataFrame | None) -> str:
        """Name the ``var`` column or index whose values would match, or the key kinds."""
        best_source, best = None, 0.0
        if var is not None:
            candidates = {"var_names": var.index}
            candidates.update(
                {
                    f"var[{column!r}]": var[column]
                    for column in var.columns
                    if not pd.api.types.is_numeric_dtype(var[column])
                }
            )
            for source, values in candidates.items():
                fraction = self.overlap(list(values.astype(str))).fraction
                if fraction > best:
                    best_source, best = source, fraction
        if best_source is not None and best >= 0.5:
            column = best_source[5:-2] if best_source.startswith("var[") else None
            use = f"gene_key={column!r}" if column else "gene_key=None (var_names)"
            return (
                f"The model's gene keys are in {best_source} ({best:.0%} overlap): register "
                f"the data with setup_anndata(..., {use}), or make the keys the model reads "
                f"hold them."
            )
        example = str(keys[0]) if len(keys) else ""
        return (
            f"The model's keys look like {_key_kind(self.keys)} (e.g. {self.keys[0]!r}); "
            f"the data's look like {_key_kind(keys)} (e.g. {example!r}). "
            "Map them to the same kind of identifier, or choose gene_key accordingly."
        )


def _key_kind(keys: Sequence[str]) -> str:
    sample = [str(k) for k in list(keys)[:200]]
    ensembl = sum(bool(_ENSEMBL.match(k)) for k in sample)
    return "Ensembl IDs" if sample and ensembl > len(sample) / 2 else "gene symbols"
