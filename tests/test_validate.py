"""Bad input: every case gets a clear error naming the fix, or a documented handling."""

import warnings

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scvi
import torch
from scipy import sparse

from scexceiver import ExceiverModel
from scexceiver.data import check_counts

TINY = {"n_latents": 4, "dim": 8, "n_layers": 1, "ff_dim": 16, "head_hidden": 8, "heads": 2}


@pytest.fixture
def small(pbmc_small):
    """200 real cells on 500 genes, with the counts also in a 'counts' layer."""
    adata = pbmc_small[:200, :500].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.obs["batch"] = np.where(np.arange(adata.n_obs) % 2, "a", "b")
    return adata


@pytest.fixture(scope="module")
def fitted(pbmc_small):
    """A tiny model trained a few steps on 200 real cells x 500 genes."""
    scvi.settings.seed = 0
    adata = pbmc_small[:200, :500].copy()
    ExceiverModel.setup_anndata(adata)
    model = ExceiverModel(adata, **TINY)
    model.train(max_steps=3, batch_size=64, early_stopping=False, enable_progress_bar=False)
    return model, adata


def test_log_normalised_data_names_the_counts_layer_and_the_override(small):
    sc.pp.normalize_total(small, target_sum=1e4)
    sc.pp.log1p(small)
    with pytest.raises(ValueError, match=r"non-integer .*log-normalised.*layers: \['counts'\]"):
        ExceiverModel.setup_anndata(small)
    ExceiverModel.setup_anndata(small, layer="counts")
    # ambient-corrected counts are fractional by design: an explicit override accepts them
    small.layers["corrected"] = small.layers["counts"] * 0.9
    with pytest.raises(ValueError, match="allow_non_integer=True"):
        ExceiverModel.setup_anndata(small, layer="corrected")
    ExceiverModel.setup_anndata(small, layer="corrected", allow_non_integer=True)
    model = ExceiverModel(small, **TINY)
    assert model.registry_["setup_args"]["allow_non_integer"] is True


@pytest.mark.parametrize(
    ("value", "message"),
    [(-1.0, "negative values .*scaled"), (np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")],
)
@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_negative_and_non_finite_values_are_refused(small, value, message, fmt):
    x = small.X.toarray()
    x[5, 7] = value
    small.X = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[fmt](x)
    with pytest.raises(ValueError, match=message):
        ExceiverModel.setup_anndata(small, allow_non_integer=True)


def test_missing_layer_and_keys(small):
    with pytest.raises(ValueError, match=r"Layer 'raw' is not in adata.layers .*\['counts'\]"):
        ExceiverModel.setup_anndata(small, layer="raw")
    with pytest.raises(ValueError, match="batch_key 'sample' is not a column of obs"):
        ExceiverModel.setup_anndata(small, batch_key="sample")
    with pytest.raises(ValueError, match="labels_key 'type' is not a column of obs"):
        ExceiverModel.setup_anndata(small, labels_key="type")
    with pytest.raises(ValueError, match="gene_key 'ensembl' is not a column of var"):
        ExceiverModel.setup_anndata(small, gene_key="ensembl")
    small.obs.loc[small.obs_names[:3], "batch"] = np.nan
    with pytest.raises(ValueError, match="3 missing values; give every cell a batch"):
        ExceiverModel.setup_anndata(small, batch_key="batch")
    no_x = ad.AnnData(obs=small.obs, var=small.var, layers={"counts": small.X})
    with pytest.raises(ValueError, match=r"adata.X is None"):
        ExceiverModel.setup_anndata(no_x)


def test_duplicate_gene_names_are_refused(small):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small.var_names = [*small.var_names[:-1], small.var_names[0]]
    with pytest.raises(ValueError, match=r"duplicated: \['.*'\].*var_names_make_unique"):
        ExceiverModel.setup_anndata(small)


def test_unsupported_matrix_types_and_dtypes(small):
    for x, message in [
        (sparse.csr_array(small.X), "sparse array .*csr_matrix"),
        (small.X.toarray() > 0, "dtype bool"),
        (small.X.toarray().astype(np.complex64), "dtype complex64"),
    ]:
        with pytest.raises(TypeError, match=message):
            check_counts(x)
    small.layers["bad"] = sparse.csr_array(small.X)
    with pytest.raises(TypeError, match="sparse array"):
        ExceiverModel.setup_anndata(small, layer="bad")


def test_empty_shapes_and_all_zero_data():
    with pytest.raises(ValueError, match="at least one cell"):
        check_counts(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="at least one cell"):
        check_counts(sparse.csr_matrix((4, 0)))
    with pytest.raises(ValueError, match=r"Every cell .* zero counts"):
        ExceiverModel.setup_anndata(ad.AnnData(sparse.csr_matrix((5, 4), dtype=np.float32)))


def test_zero_count_genes_are_fine_and_zero_count_cells_warn(small):
    x = small.X.toarray()
    x[:, :10] = 0
    x[[3, 8]] = 0
    with pytest.warns(UserWarning, match="2 of 200 cells .* zero counts.*filter_cells"):
        summary = check_counts(sparse.csr_matrix(x))
    assert (summary.n_empty_cells, summary.n_cells) == (2, 200)
    assert summary.n_empty_genes >= 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # zero genes alone give no warning
        assert check_counts(np.delete(x, [3, 8], axis=0)).n_empty_genes >= 10


def test_zero_count_cells_share_one_finite_embedding(fitted):
    model, adata = fitted
    query = adata[:60].copy()
    x = query.X.toarray()
    x[[4, 40]] = 0
    query.X = sparse.csr_matrix(x)
    with pytest.warns(UserWarning, match="2 of 60 cells"):
        z = model.get_latent_representation(query)
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z[4], z[40])
    reference = model.get_latent_representation(indices=np.arange(60))
    keep = np.setdiff1d(np.arange(60), [4, 40])
    np.testing.assert_allclose(z[keep], reference[keep], rtol=1e-5, atol=1e-6)
    assert np.abs(z[4] - reference[4]).max() > 1e-3


def test_all_matrix_formats_and_dtypes_give_identical_embeddings(fitted, tmp_path):
    model, adata = fitted
    base = adata[:64].copy()
    assert base.X.max() < 2048  # float16 holds these counts exactly
    reference = model.get_latent_representation(base)
    dense = base.X.toarray()
    variants = {
        "csc": sparse.csc_matrix(base.X),
        "csr_int32": sparse.csr_matrix(dense.astype(np.int32)),
        "dense_float16": dense.astype(np.float16),
        "dense_float64": dense.astype(np.float64),
        "dense_int64": dense.astype(np.int64),
    }
    for name, x in variants.items():
        query = base.copy()
        query.X = x
        np.testing.assert_array_equal(model.get_latent_representation(query), reference, name)
    for name, x in {"backed_csr": base.X, "backed_dense": dense}.items():
        path = tmp_path / f"{name}.h5ad"
        ad.AnnData(x, obs=base.obs[[]], var=base.var[[]]).write_h5ad(path)
        backed = ad.read_h5ad(path, backed="r")
        np.testing.assert_allclose(
            model.get_latent_representation(backed), reference, rtol=1e-5, atol=1e-6
        )


def test_backed_counts_are_scanned_in_chunks(small, tmp_path):
    x = small.X.toarray()
    x[150, 3] = 0.5
    for name, matrix in {"dense": x, "csr": sparse.csr_matrix(x)}.items():
        ad.AnnData(matrix).write_h5ad(tmp_path / f"{name}.h5ad")
        backed = ad.read_h5ad(tmp_path / f"{name}.h5ad", backed="r")
        with pytest.raises(ValueError, match="1 non-integer values"):
            check_counts(backed.X, chunk_size=64)
        assert check_counts(backed.X, chunk_size=64, allow_non_integer=True).n_cells == 200


def test_views_are_refused_at_setup_and_left_untouched_by_inference(fitted, small):
    with pytest.raises(ValueError, match=r"view .*adata\[cells\].copy\(\)"):
        ExceiverModel.setup_anndata(small[:50])
    model, adata = fitted
    view = adata[10:40]
    z = model.get_latent_representation(view)
    assert view.is_view and "_scvi_manager_uuid" not in view.uns.keys() - adata.uns.keys()
    np.testing.assert_allclose(
        z, model.get_latent_representation(indices=np.arange(10, 40)), rtol=1e-5, atol=1e-6
    )


def test_gene_panel_is_aligned_by_key_or_refused_with_the_fix(fitted):
    model, adata = fitted
    reference = model.get_latent_representation(adata[:20].copy())
    renamed = adata[:20].copy()
    renamed.var_names = renamed.var["gene_ids"].astype(str)
    with pytest.raises(ValueError, match=r"0 shared genes.*gene_key='gene_symbols'"):
        model.get_latent_representation(renamed)
    reordered = adata[:20, ::-1].copy()
    np.testing.assert_allclose(
        model.get_latent_representation(reordered), reference, rtol=1e-5, atol=1e-6
    )
    assert model.align_genes(adata[:20, :400].copy()).n_shared == 400


def test_counts_modified_after_setup_are_caught_before_training(small):
    ExceiverModel.setup_anndata(small)
    model = ExceiverModel(small, **TINY)
    sc.pp.normalize_total(small)  # in place, after setup
    with pytest.raises(ValueError, match="non-integer"):
        model.train(max_steps=1)
    assert not model.module.is_fitted


def test_non_finite_weights_stop_training_and_embedding(small):
    scvi.settings.seed = 0
    ExceiverModel.setup_anndata(small)
    model = ExceiverModel(small, **TINY)
    model.train(max_steps=2, batch_size=64, early_stopping=False, enable_progress_bar=False)
    assert np.isfinite(model.get_latent_representation()).all()
    with torch.no_grad():
        model.module.network.latents.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="200 of 200 cells are NaN or infinite"):
        model.get_latent_representation()
    with pytest.raises(FloatingPointError, match=r"training loss is nan .*lower lr"):
        model.train(max_steps=1, batch_size=64, early_stopping=False, enable_progress_bar=False)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_training_on_real_data_gives_finite_losses(pbmc_small, precision):
    scvi.settings.seed = 0
    adata = pbmc_small[:160, :1000].copy()
    ExceiverModel.setup_anndata(adata)
    model = ExceiverModel(adata)
    model.train(
        max_epochs=2,
        batch_size=32,
        precision=precision,
        check_val_every_n_epoch=1,
        early_stopping=False,
        enable_progress_bar=False,
    )
    for key in ("train_loss", "validation_loss"):
        loss = model.history[key][key].to_numpy(dtype=float)
        assert loss.size == 2 and np.isfinite(loss).all() and 0 < loss[-1] < 10
    assert np.isfinite(model.get_latent_representation()).all()
