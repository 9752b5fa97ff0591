"""Per-gene statistics of log-normalised expression in one streaming sparse pass."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse


@dataclass(frozen=True)
class GeneStatistics:
    """Statistics that define the processed values and the masking rate.

    Attributes
    ----------
    mean, std
        Per-gene mean and (population) std of ``log1p(CP10k)`` over the cells.
    expressed_mean
        Per-gene mean processed value over cells where the gene is detected
        (1 for genes never detected).
    detection_rate
        Per-gene fraction of cells where the gene is detected.

    With gene panels, the per-gene statistics are over the cells whose source measured
    the gene.
    median_detected
        Median number of detected genes per cell.
    log_library_mean, log_library_std
        Mean and std of ``log1p`` of the cells' total counts.
    n_cells
        Number of cells used.
    """

    mean: np.ndarray
    std: np.ndarray
    expressed_mean: np.ndarray
    detection_rate: np.ndarray
    median_detected: float
    log_library_mean: float
    log_library_std: float
    n_cells: int

    def to_vocabulary(self, positions: np.ndarray, n_genes: int) -> GeneStatistics:
        """These statistics placed at vocabulary ``positions`` of a vocabulary of ``n_genes``.

        Vocabulary genes without statistics get neutral values (mean 0, std 1, expressed
        mean 1, detection rate 0).
        """

        def scatter(values: np.ndarray, fill: float) -> np.ndarray:
            out = np.full(n_genes, fill, dtype=np.float32)
            out[positions] = values
            return out

        return replace(
            self,
            mean=scatter(self.mean, 0.0),
            std=scatter(self.std, 1.0),
            expressed_mean=scatter(self.expressed_mean, 1.0),
            detection_rate=scatter(self.detection_rate, 0.0),
        )


def gene_statistics(
    x,
    indices: np.ndarray | None = None,
    *,
    genes: np.ndarray | None = None,
    target_sum: float = 1e4,
    chunk_size: int = 4096,
    panels: tuple[np.ndarray, np.ndarray] | None = None,
) -> GeneStatistics:
    """Compute :class:`GeneStatistics` of raw counts ``x`` over rows ``indices``.

    Reads the rows spanning ``chunk_size`` of the cells at a time, in one contiguous
    read, and keeps them sparse, so memory stays bounded by one chunk and backed
    (on-disk) matrices are streamed sequentially.

    Parameters
    ----------
    x
        (cells, genes) raw counts: scipy sparse, dense array or backed dataset.
    indices
        Rows to use (the training cells); all rows by default.
    genes
        Columns to use (e.g. the genes in a model's vocabulary); library sizes are summed
        over these columns only. All columns by default.
    target_sum
        Counts per cell after library-size scaling.
    chunk_size
        Rows per chunk.
    panels
        ``(codes, measured)``: the gene panel of each row of ``x`` (integer codes) and a
        (panels, columns of ``x``) boolean table of the genes each panel measured. A
        gene's mean, std and detection rate are then over the cells that measured it
        (a gene no used cell measured gets mean 0, std 1, detection rate 0). ``None``:
        every cell measured every gene.
    """
    if indices is None:
        indices = np.arange(x.shape[0])
    indices = np.sort(np.asarray(indices))
    if indices.size == 0:
        raise ValueError("Cannot compute gene statistics on zero cells.")
    n_genes = x.shape[1] if genes is None else len(genes)
    total = np.zeros(n_genes)
    total_sq = np.zeros(n_genes)
    detected = np.zeros(n_genes)
    per_cell_detected = []
    log_library = []
    for start in range(0, indices.size, chunk_size):
        rows = indices[start : start + chunk_size]
        # one contiguous read per chunk (fast on backed / on-disk matrices)
        block = x[int(rows[0]) : int(rows[-1]) + 1]
        chunk = sparse.csr_matrix(block[rows - rows[0]], dtype=np.float64)
        if genes is not None:
            chunk = chunk[:, genes]
        chunk.eliminate_zeros()
        library = np.asarray(chunk.sum(axis=1)).ravel()
        log_library.append(np.log1p(library))
        scale = target_sum / np.maximum(library, 1.0)
        logged = sparse.diags(scale) @ chunk
        logged.data = np.log1p(logged.data)
        total += np.asarray(logged.sum(axis=0)).ravel()
        total_sq += np.asarray(logged.multiply(logged).sum(axis=0)).ravel()
        detected += np.bincount(logged.indices, minlength=n_genes)
        per_cell_detected.append(np.diff(chunk.indptr))
    n = _cells_measuring(indices, genes, n_genes, panels)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / n, 0.0)
        std = np.sqrt(np.maximum(np.where(n > 0, total_sq / n, 0.0) - mean**2, 0.0))
    std = np.where(std > 0, std, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        expressed_log_mean = total / detected
    expressed_mean = np.where(detected > 0, (expressed_log_mean - mean) / std + 1.0, 1.0)
    return GeneStatistics(
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        expressed_mean=expressed_mean.astype(np.float32),
        detection_rate=(detected / np.maximum(n, 1)).astype(np.float32),
        median_detected=float(np.median(np.concatenate(per_cell_detected))),
        log_library_mean=float(np.mean(np.concatenate(log_library))),
        log_library_std=float(np.std(np.concatenate(log_library)) or 1.0),
        n_cells=int(indices.size),
    )


def _cells_measuring(
    indices: np.ndarray,
    genes: np.ndarray | None,
    n_genes: int,
    panels: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """Per gene, how many of the cells ``indices`` measured it."""
    if panels is None:
        return np.full(n_genes, float(indices.size))
    codes, measured = panels
    measured = np.asarray(measured, dtype=bool)
    if genes is not None:
        measured = measured[:, genes]
    cells_per_panel = np.bincount(np.asarray(codes)[indices], minlength=measured.shape[0])
    return cells_per_panel.astype(np.float64) @ measured
