"""Nothing lost: no public call changes the user's AnnData beyond scvi-tools' setup fields."""

import numpy as np
import pandas as pd
import pytest
import scvi
from scipy import sparse

from scexceiver import ExceiverModel

TINY = {"n_latents": 4, "dim": 8, "n_layers": 1, "ff_dim": 16, "head_hidden": 8, "heads": 2}
#: What scvi-tools' setup writes (documented): its ids in uns, category codes in obs.
SETUP_PREFIX = "_scvi_"


def assert_same(before, after):
    """Deep comparison of two AnnData objects, ignoring scvi-tools' setup fields."""
    assert after.shape == before.shape and after.is_view == before.is_view
    assert after.obs_names.equals(before.obs_names) and after.var_names.equals(before.var_names)
    _same_matrix(before.X, after.X)
    for attr in ("layers", "obsm", "varm", "obsp", "varp"):
        b, a = getattr(before, attr), getattr(after, attr)
        assert set(a.keys()) == set(b.keys()), attr
        for key in b.keys():
            _same_matrix(b[key], a[key])
    for attr in ("obs", "var"):
        b, a = getattr(before, attr), getattr(after, attr)
        kept = [c for c in a.columns if not c.startswith(SETUP_PREFIX)]
        pd.testing.assert_frame_equal(a[kept], b, check_exact=True)
    _same_value(
        {k: v for k, v in before.uns.items() if not k.startswith(SETUP_PREFIX)},
        {k: v for k, v in after.uns.items() if not k.startswith(SETUP_PREFIX)},
    )


def _same_matrix(before, after):
    assert type(after) is type(before) and after.dtype == before.dtype
    if sparse.issparse(before):
        assert after.format == before.format
        np.testing.assert_array_equal(after.indptr, before.indptr)
        np.testing.assert_array_equal(after.indices, before.indices)
        np.testing.assert_array_equal(after.data, before.data)
    elif isinstance(before, pd.DataFrame):
        pd.testing.assert_frame_equal(after, before, check_exact=True)
    else:
        np.testing.assert_array_equal(after, before)


def _same_value(before, after):
    if isinstance(before, dict):
        assert set(after) == set(before)
        for key in before:
            _same_value(before[key], after[key])
    elif isinstance(before, np.ndarray | pd.DataFrame) or sparse.issparse(before):
        _same_matrix(before, after)
    else:
        assert after == before


def _user_anndata(pbmc_small, n_cells):
    adata = pbmc_small[:n_cells, :300].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.obs["batch"] = pd.Categorical(np.where(np.arange(n_cells) % 2, "a", "b"))
    adata.obsm["X_pca"] = np.arange(n_cells * 3, dtype=np.float32).reshape(n_cells, 3)
    adata.obsm["X_exceiver"] = np.ones((n_cells, 2))  # an earlier result the user keeps
    adata.varm["loadings"] = np.ones((300, 2))
    adata.obsp["distances"] = sparse.eye(n_cells, format="csr")
    adata.uns["notes"] = {"by": "me", "params": np.array([1, 2])}
    return adata


@pytest.mark.parametrize("fmt", ["csr", "dense"])
def test_public_calls_leave_the_anndata_unchanged(pbmc_small, tmp_path, fmt):
    scvi.settings.seed = 0
    adata = _user_anndata(pbmc_small, 120)
    if fmt == "dense":
        adata.X = adata.X.toarray()
    query = _user_anndata(pbmc_small[200:], 40)
    snapshot, query_snapshot = adata.copy(), query.copy()

    ExceiverModel.setup_anndata(adata, layer="counts", batch_key="batch")
    assert_same(snapshot, adata)
    model = ExceiverModel(adata, **TINY)
    assert_same(snapshot, adata)
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert_same(snapshot, adata)
    calls = [
        lambda: model.get_latent_representation(),
        lambda: model.get_latent_representation(query),
        lambda: model.get_gene_embeddings(query),
        lambda: model.predict_expression(adata, gene_list=list(adata.var_names[:5])),
        lambda: model.get_reconstruction_error(query),
        lambda: model.save(tmp_path / "m", overwrite=True, save_anndata=True),
        lambda: ExceiverModel.load(tmp_path / "m", adata=adata),
        lambda: ExceiverModel.load(tmp_path / "m").get_latent_representation(query),
    ]
    for call in calls:
        call()
        assert_same(snapshot, adata)
        assert_same(query_snapshot, query)
