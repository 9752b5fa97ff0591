import numpy as np
import pytest
import scvi
import torch
from scipy import sparse

from scexceiver import ExceiverModel
from scexceiver.data import gene_statistics


@pytest.fixture(scope="module")
def cells(trained):
    """200 cells of the trained model's data and their reference embeddings."""
    model, adata = trained
    subset = adata[:200].copy()
    return subset, model.get_latent_representation(indices=np.arange(200))


def _without(adata, genes):
    """Copy of ``adata`` on the same panel with ``genes`` (positions) set to zero."""
    keep = np.ones(adata.n_vars)
    keep[genes] = 0
    out = adata.copy()
    out.X = sparse.csr_matrix(adata.X.multiply(keep[None, :]))
    out.X.eliminate_zeros()
    return out


@pytest.mark.parametrize("panel", ["permuted", "subset", "superset"])
def test_other_gene_panels_give_the_reference_embeddings(trained, cells, panel):
    model, _ = trained
    adata, reference = cells
    rng = np.random.default_rng(1)
    order = rng.permutation(adata.n_vars)
    if panel == "permuted":
        other = adata[:, order].copy()
    elif panel == "subset":
        kept = np.sort(order[: adata.n_vars // 2])
        other = adata[:, kept[::-1]].copy()
        dropped = np.setdiff1d(np.arange(adata.n_vars), kept)
        reference = model.get_latent_representation(_without(adata, dropped))
    else:
        other = adata[:, order].copy()
        extra = other[:, :500].copy()
        extra.var_names = [f"NEW_{g}" for g in extra.var_names]
        import anndata

        other = anndata.concat([other, extra], axis=1, merge="first")
        other.obs = adata.obs.copy()
    overlap = model.align_genes(other)
    assert overlap.fraction == 1.0
    assert overlap.n_shared == (adata.n_vars // 2 if panel == "subset" else adata.n_vars)
    np.testing.assert_array_equal(model.get_latent_representation(other), reference)


def test_ensembl_ids_against_a_symbol_vocabulary_name_the_fix(trained, cells):
    model, _ = trained
    adata, _ = cells
    other = adata.copy()
    other.var_names = other.var["gene_ids"].to_numpy()
    with pytest.raises(ValueError, match="gene_key='gene_symbols'"):
        model.get_latent_representation(other)
    other.var = other.var[[]]
    with pytest.raises(ValueError, match="Ensembl IDs"):
        model.align_genes(other)


def test_query_on_the_same_panel_embeds_like_the_reference(trained, cells):
    model, _ = trained
    adata, reference = cells
    query = ExceiverModel.load_query_data(adata.copy(), model)
    assert query.gene_vocabulary_ == model.gene_vocabulary_
    z = query.get_latent_representation()
    assert np.isfinite(z).all()
    np.testing.assert_array_equal(z, reference)


def test_query_with_new_genes_trains_only_them_when_frozen(trained, cells):
    model, _ = trained
    adata, _ = cells
    scvi.settings.seed = 0
    query = adata[:120, 1000:].copy()
    extra = adata[:120, :300].copy()
    extra.var_names = [f"NEW_{g}" for g in extra.var_names]
    import anndata

    query = anndata.concat([query, extra], axis=1, merge="first")
    q = ExceiverModel.load_query_data(query, model, freeze_backbone=True)
    n_ref = len(model.gene_vocabulary_)
    assert len(q.gene_vocabulary_) == n_ref + 300
    assert q.gene_vocabulary_.keys[n_ref:] == tuple(extra.var_names)
    stats = gene_statistics(query.X)
    new = q.module.normalizer.mean[n_ref : n_ref + 300].numpy()
    np.testing.assert_allclose(new, stats.mean[-300:], rtol=1e-6)
    shared = model.gene_vocabulary_.positions(query.var_names[:-300])
    assert torch.equal(q.module.normalizer.std[shared], model.module.normalizer.std[shared])
    before = {k: v.clone() for k, v in q.module.state_dict().items()}
    q.train(max_epochs=2, batch_size=60, warmup_steps=1, train_size=1.0, early_stopping=False)
    after = q.module.state_dict()
    table = "network.gene_embedding.weight"
    assert torch.equal(after[table][:n_ref], before[table][:n_ref])
    assert not torch.equal(after[table][n_ref:-1], before[table][n_ref:-1])
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) <= {table, "network.output_bias"}
    # the shared genes still embed as the reference
    np.testing.assert_array_equal(
        q.get_gene_embeddings(adata)[shared[:5]], model.get_gene_embeddings()[shared[:5]]
    )
