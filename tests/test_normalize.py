import numpy as np
import torch
from scipy import sparse

from scexceiver.data import gene_statistics, tokenize_counts
from scexceiver.module import ExpressionNormalizer


def _reference(counts):
    library = counts.sum(1, keepdims=True)
    logged = np.log1p(counts / np.maximum(library, 1) * 1e4)
    return logged


def test_streaming_statistics_match_dense_computation(pbmc_small):
    dense = pbmc_small.X.toarray().astype(np.float64)
    logged = _reference(dense)
    stats = gene_statistics(pbmc_small.X, chunk_size=97)
    np.testing.assert_allclose(stats.mean, logged.mean(0), rtol=1e-5, atol=1e-6)
    std = logged.std(0)
    np.testing.assert_allclose(stats.std, np.where(std > 0, std, 1), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats.detection_rate, (dense > 0).mean(0), rtol=1e-6)
    assert stats.median_detected == np.median((dense > 0).sum(1))
    subset = np.array([5, 1, 300, 42])
    sub = gene_statistics(pbmc_small.X, subset)
    np.testing.assert_allclose(sub.mean, logged[np.sort(subset)].mean(0), rtol=1e-5, atol=1e-6)
    assert sub.n_cells == 4


def test_normalizer_implements_the_paper_formula(pbmc_small):
    dense = pbmc_small.X[:20].toarray().astype(np.float64)
    stats = gene_statistics(pbmc_small.X)
    normalizer = ExpressionNormalizer(pbmc_small.n_vars)
    normalizer.set_statistics(torch.from_numpy(stats.mean), torch.from_numpy(stats.std))
    expected = np.minimum((_reference(dense) - stats.mean) / stats.std, 10) + 1
    tokens = tokenize_counts(pbmc_small.X[:20])
    values = normalizer(tokens["counts"], tokens["library_size"], tokens["gene_idx"])
    mask = tokens["token_mask"]
    got = values[mask].numpy()
    rows, _ = np.nonzero(mask.numpy())
    ref = expected[rows, tokens["gene_idx"][mask].numpy()]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    # a zero count has value 1 - mean / std; the clip holds
    zero = normalizer(torch.zeros(1, 3), torch.ones(1), torch.tensor([[0, 1, 2]]))
    np.testing.assert_allclose(zero[0].numpy(), 1 - stats.mean[:3] / stats.std[:3], rtol=1e-5)
    assert float(values.max()) <= 11.0


def test_zero_variance_genes_get_unit_std():
    x = sparse.csr_matrix(np.array([[1.0, 0.0], [3.0, 0.0]]))
    stats = gene_statistics(x)
    assert stats.std[1] == 1.0 and stats.expressed_mean[1] == 1.0
