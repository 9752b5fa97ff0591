import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import sparse

from scexceiver.data import GeneOverlap, GeneVocabulary, tokenize_counts


@pytest.fixture(scope="module")
def vocabulary(pbmc_small):
    return GeneVocabulary.from_keys(pbmc_small.var_names[:1000])


def test_overlap_counts_and_fractions(vocabulary, pbmc_small):
    keys = list(vocabulary.keys)
    lookup, overlap = vocabulary.align(keys)
    assert lookup is None and overlap == GeneOverlap(1000, 1000, 1000)
    superset = keys[::-1] + list(pbmc_small.var_names[1000:1500])
    lookup, overlap = vocabulary.align(superset)
    np.testing.assert_array_equal(lookup[:1000], np.arange(999, -1, -1))
    assert (lookup[1000:] == -1).all()
    assert (overlap.n_shared, overlap.n_panel, overlap.n_vocabulary) == (1000, 1500, 1000)
    assert overlap.fraction == 1.0 and overlap.fraction_of_panel == pytest.approx(2 / 3)
    lookup, overlap = vocabulary.align([*keys[:300], "NEW1", "NEW2"], min_overlap=0.9)
    assert overlap.n_shared == 300 and overlap.fraction_of_vocabulary == pytest.approx(0.3)
    assert overlap.fraction == pytest.approx(300 / 302)
    assert "300 shared genes" in str(overlap)


def test_extend_appends_unknown_keys_in_order(vocabulary):
    extended = vocabulary.extend(["NEW_B", vocabulary.keys[5], "NEW_A"])
    assert extended.keys == (*vocabulary.keys, "NEW_B", "NEW_A")


def test_symbol_ensembl_mix_up_names_the_gene_key(vocabulary, pbmc_small):
    var = pbmc_small.var.iloc[:1000].copy()
    var.index = var["gene_ids"].to_numpy()
    with pytest.raises(ValueError, match="gene_key='gene_symbols'") as error:
        vocabulary.align(list(var.index), var)
    assert "0 shared genes" in str(error.value)
    # no var column matches: the message says which kind of key each side holds
    with pytest.raises(ValueError, match=r"look like gene symbols.*look like Ensembl IDs"):
        vocabulary.align(list(var.index), var[[]])
    # a lower threshold accepts a partial panel
    half = list(vocabulary.keys[:400]) + [f"X{i}" for i in range(600)]
    with pytest.raises(ValueError, match=r"min_gene_overlap=0\.5"):
        vocabulary.align(half, min_overlap=0.5)
    assert vocabulary.align(half, min_overlap=0.3)[1].n_shared == 400


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_keep=st.integers(1, 200), n_extra=st.integers(0, 50))
def test_tokens_through_a_lookup_match_the_reference_panel(pbmc_small, seed, n_keep, n_extra):
    """A permuted subset plus unknown genes gives the tokens of the reference panel
    restricted to the shared genes (library size summed over shared genes)."""
    rng = np.random.default_rng(seed)
    x = pbmc_small.X[:40, :200]
    n_genes = x.shape[1]
    kept = rng.choice(n_genes, n_keep, replace=False)
    extra = pbmc_small.X[:40, 200 + rng.choice(500, n_extra, replace=False)]
    panel = sparse.hstack([x[:, kept], extra]).tocsr()
    order = rng.permutation(panel.shape[1])
    panel = panel[:, order]
    lookup = np.concatenate([kept, np.full(n_extra, -1)])[order]
    tokens = tokenize_counts(panel, lookup, n_genes)
    mask = np.zeros(n_genes)
    mask[kept] = 1
    reference = tokenize_counts(sparse.csr_matrix(x.multiply(mask[None, :])), None)
    for key, value in reference.items():
        assert torch.equal(tokens[key], value), key


def test_lookup_needs_the_vocabulary_size(pbmc_small):
    with pytest.raises(ValueError, match="n_genes"):
        tokenize_counts(pbmc_small.X[:2, :5], np.arange(5))
