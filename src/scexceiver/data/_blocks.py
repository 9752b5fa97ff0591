"""Reading minibatches of a (backed) count matrix as whole contiguous blocks of rows."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from scipy import sparse
from scvi import REGISTRY_KEYS
from torch.utils.data import Dataset


class BlockCache:
    """Rows of a matrix read in aligned blocks of ``chunk_size`` rows, the latest kept.

    Block ``k`` holds rows ``k * chunk_size`` to ``(k + 1) * chunk_size - 1`` and is read
    with one contiguous slice (one read of each of a backed CSR matrix's ``data``,
    ``indices`` and ``indptr``), kept sparse. At most ``max_chunks`` blocks are held;
    the least recently used one is dropped first, so memory is bounded by
    ``max_chunks x chunk_size`` rows whatever the size of the matrix.

    Parameters
    ----------
    x
        (cells, genes) counts: a backed sparse dataset, scipy sparse or dense array.
    chunk_size
        Rows per block.
    max_chunks
        Blocks held in memory.
    """

    def __init__(self, x, *, chunk_size: int, max_chunks: int) -> None:
        self.x = x
        self.chunk_size = chunk_size
        self.max_chunks = max_chunks
        self.blocks: OrderedDict[int, sparse.csr_matrix] = OrderedDict()
        self.n_reads = 0

    def __getstate__(self) -> dict:
        # worker processes start with an empty cache of their own
        return {**self.__dict__, "blocks": OrderedDict()}

    def _block(self, k: int) -> sparse.csr_matrix:
        if k in self.blocks:
            self.blocks.move_to_end(k)
            return self.blocks[k]
        start = k * self.chunk_size
        block = sparse.csr_matrix(self.x[start : start + self.chunk_size], dtype=np.float32)
        self.n_reads += 1
        self.blocks[k] = block
        if len(self.blocks) > self.max_chunks:
            self.blocks.popitem(last=False)
        return block

    def read(self, rows: np.ndarray) -> sparse.csr_matrix:
        """Rows ``rows`` (sorted ascending) as one CSR float32 matrix, in that order."""
        block_of = rows // self.chunk_size
        ks, starts = np.unique(block_of, return_index=True)
        ends = np.append(starts[1:], rows.size)
        parts = [
            self._block(int(k))[rows[s:e] - int(k) * self.chunk_size]
            for k, s, e in zip(ks, starts, ends, strict=True)
        ]
        if not parts:
            return sparse.csr_matrix((0, self.x.shape[1]), dtype=np.float32)
        return sparse.vstack(parts, format="csr")


class ChunkedReadDataset(Dataset):
    """A scvi-tools dataset whose counts are read through a :class:`BlockCache`.

    Wraps an :class:`~scvi.data.AnnTorchDataset` that loads every registered field but
    the counts; a minibatch of rows gets those fields from it and its counts (scipy
    CSR, rows sorted as scvi-tools sorts them for backed data) from the blocks.

    Parameters
    ----------
    fields
        The dataset of the other registered fields.
    counts
        Reader of the counts.
    """

    def __init__(self, fields: Dataset, counts: BlockCache) -> None:
        self.fields = fields
        self.counts = counts

    def __len__(self) -> int:
        return len(self.fields)

    def __getitem__(self, indexes) -> dict:
        rows = np.sort(np.atleast_1d(np.asarray(indexes, dtype=np.int64)))
        batch = self.fields[rows]
        batch[REGISTRY_KEYS.X_KEY] = self.counts.read(rows)
        return batch
