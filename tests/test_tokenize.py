import numpy as np
import torch
from scipy import sparse

from scexceiver.data import tokenize_counts


def _dense_from_tokens(tokens, n_genes):
    b = tokens["counts"].shape[0]
    dense = torch.zeros(b, n_genes + 1).scatter_(1, tokens["gene_idx"], tokens["counts"])
    return dense[:, :n_genes].numpy()


def test_tokens_round_trip_real_counts(pbmc_small):
    x = pbmc_small.X[:50]
    tokens = tokenize_counts(x)
    np.testing.assert_array_equal(_dense_from_tokens(tokens, x.shape[1]), x.toarray())
    lengths = np.diff(x.indptr)
    assert tokens["gene_idx"].shape == (50, lengths.max())
    assert tokens["token_mask"].sum(1).tolist() == lengths.tolist()
    np.testing.assert_allclose(tokens["library_size"].numpy(), np.asarray(x.sum(1)).ravel())
    # sorted per cell, padding last with index n_genes
    assert torch.all(tokens["gene_idx"].diff(dim=1) >= 0)
    assert torch.all(tokens["gene_idx"][~tokens["token_mask"]] == x.shape[1])


def test_all_input_layouts_give_identical_tokens(pbmc_small):
    x = pbmc_small.X[:20]
    reference = tokenize_counts(x)
    unsorted = x.copy()
    unsorted.indices = unsorted.indices.copy()
    for r in range(unsorted.shape[0]):
        s, e = unsorted.indptr[r], unsorted.indptr[r + 1]
        unsorted.indices[s:e] = unsorted.indices[s:e][::-1]
        unsorted.data[s:e] = unsorted.data[s:e][::-1]
    with_zeros = x.copy()
    with_zeros.data[::7] = 0  # explicit zeros are dropped
    variants = [
        x.toarray(),
        sparse.csc_matrix(x),
        x.astype(np.int32),
        torch.sparse_csr_tensor(
            torch.from_numpy(x.indptr.astype(np.int64)),
            torch.from_numpy(x.indices.astype(np.int64)),
            torch.from_numpy(x.data),
            size=x.shape,
        ),
        unsorted,
    ]
    for variant in variants:
        tokens = tokenize_counts(variant)
        for key in reference:
            torch.testing.assert_close(tokens[key], reference[key])
    zeros_tokens = tokenize_counts(with_zeros)
    np.testing.assert_array_equal(
        _dense_from_tokens(zeros_tokens, x.shape[1]), with_zeros.toarray()
    )
    assert zeros_tokens["token_mask"].sum() == (with_zeros.toarray() > 0).sum()


def test_empty_cells_and_empty_batches():
    x = sparse.csr_matrix((3, 10), dtype=np.float32)
    tokens = tokenize_counts(x)
    assert tokens["gene_idx"].shape == (3, 0)
    assert tokens["library_size"].tolist() == [0.0, 0.0, 0.0]


def test_token_tensors_do_not_grow_with_the_gene_panel(pbmc_small):
    x = pbmc_small.X[:30]
    wider = sparse.hstack([x, sparse.csr_matrix((30, 30_000), dtype=x.dtype)]).tocsr()
    narrow, wide = tokenize_counts(x), tokenize_counts(wider)
    for key in ("counts", "token_mask", "library_size"):
        torch.testing.assert_close(narrow[key], wide[key])
    # same genes; only the padding index (n_genes) differs
    real = narrow["token_mask"]
    torch.testing.assert_close(narrow["gene_idx"][real], wide["gene_idx"][real])
    assert narrow["gene_idx"].shape == wide["gene_idx"].shape == (30, np.diff(x.indptr).max())
