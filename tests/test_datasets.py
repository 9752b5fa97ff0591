import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from scexceiver.datasets import pbmc3k, pbmc68k_reduced

EXPECTED_TYPES = {
    "CD4 T",
    "CD8 T",
    "NK",
    "B",
    "CD14 Monocyte",
    "FCGR3A Monocyte",
    "Dendritic",
    "Megakaryocyte",
}


@pytest.fixture(scope="module")
def adata():
    return pbmc3k()


def _gene_counts(adata, gene):
    return np.asarray(adata[:, gene].X.toarray()).ravel()


def test_shape_and_counts(adata):
    assert adata.shape == (2700, 32738)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    data = adata.X.data
    assert data.size > 1_000_000
    assert (data >= 0).all()
    np.testing.assert_array_equal(data, np.round(data))
    assert adata.raw is None
    assert len(adata.layers) == 0


def test_var(adata):
    assert adata.var_names.is_unique
    ids = adata.var["gene_ids"]
    assert ids.is_unique
    assert ids.str.startswith("ENSG").all()
    assert adata.var.loc["CD3E", "gene_ids"] == "ENSG00000198851"
    assert (adata.var["gene_symbols"] == adata.var_names).all()


def test_cell_type_labels(adata):
    ct = adata.obs["cell_type"]
    assert isinstance(ct.dtype, pd.CategoricalDtype)
    assert set(ct.cat.categories) == EXPECTED_TYPES
    assert ct.notna().all()
    counts = ct.value_counts()
    assert set(counts[counts > 0].index) == EXPECTED_TYPES
    assert counts.idxmax() == "CD4 T"
    assert counts.max() / len(ct) < 0.6
    assert 200 < counts["B"] < 500
    assert 300 < counts["CD14 Monocyte"] < 650
    assert 5 <= counts["Megakaryocyte"] < 60
    assert isinstance(adata.obs["cell_type_marker_argmax"].dtype, pd.CategoricalDtype)
    info = adata.uns["cell_type_derivation"]
    assert 0.5 < float(info["agreement_cell_type_vs_marker_argmax"]) <= 1.0
    assert "make_pbmc3k.py" in str(info["procedure"])


def test_calls_are_independent():
    a = pbmc3k()
    b = pbmc3k()
    assert a is not b
    assert a.X is not b.X
    before = b.X.data[:10].copy()
    a.X.data[:10] = -1.0
    a.obs["cell_type"] = "B"
    a.obs.loc[a.obs_names[0], "barcode"] = "modified"
    a.var.loc[a.var_names[0], "gene_ids"] = "modified"
    np.testing.assert_array_equal(b.X.data[:10], before)
    assert b.obs["cell_type"].nunique() == len(EXPECTED_TYPES)
    assert b.obs["barcode"].iloc[0] != "modified"
    assert b.var["gene_ids"].iloc[0] != "modified"
    c = pbmc3k()
    np.testing.assert_array_equal(c.X.data[:10], before)


def test_marker_sanity(adata):
    ct = adata.obs["cell_type"].to_numpy()
    lyz = _gene_counts(adata, "LYZ")
    assert lyz[ct == "CD14 Monocyte"].mean() > 5 * lyz[ct == "CD4 T"].mean()
    ms4a1 = _gene_counts(adata, "MS4A1")
    b_mean = ms4a1[ct == "B"].mean()
    for other in EXPECTED_TYPES - {"B"}:
        assert b_mean > 5 * ms4a1[ct == other].mean(), other
    ppbp = _gene_counts(adata, "PPBP")
    assert ppbp[ct == "Megakaryocyte"].mean() > 10 * ppbp[ct != "Megakaryocyte"].mean()


def test_pbmc68k_reduced_counts_reproduce_scanpys_normalised_values():
    adata = pbmc68k_reduced()
    reduced = sc.datasets.pbmc68k_reduced()
    assert adata.shape == (700, 765)
    assert adata.X.format == "csr" and adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.data, np.round(adata.X.data))
    assert adata.X.data.min() >= 1
    assert (adata.var_names == reduced.raw.var_names).all()
    # the shipped values are log1p(counts / n_counts * 1e4) over the full original panel
    renormalised = np.log1p(adata.X.toarray() / adata.obs["n_counts"].to_numpy()[:, None] * 1e4)
    np.testing.assert_allclose(renormalised, reduced.raw.X.toarray(), atol=1e-3)
    totals = np.asarray(adata.X.sum(1)).ravel()
    assert (totals < adata.obs["n_counts"].to_numpy()).all()
    labels = adata.obs["bulk_labels"].value_counts()
    assert len(labels) == 10 and labels["CD19+ B"] == 95
