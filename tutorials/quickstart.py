# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quick start: Exceiver on PBMC 3k
#
# This tutorial pretrains the default Exceiver model on the 10x PBMC 3k raw counts that
# ship with scexceiver (nothing is downloaded), writes the cell embeddings to `obsm` and
# the gene embeddings to `varm`, and looks at them with scanpy: neighbours, UMAP, Leiden
# clusters and a marker check.
#
# It is a jupytext "percent" script: run it with `python tutorials/quickstart.py`, or open
# it as a notebook with jupytext. The documentation executes it on every build.
#
# ```{note}
# To keep the documentation build to a few minutes on a 2-core CPU, this tutorial trains
# for `MAX_EPOCHS = 10` epochs. That is enough to see structure, not to get the best
# embedding: use 50 or more epochs (or `max_epochs=None`, which picks a number from the
# dataset size) for real work, ideally on a GPU.
# ```

# %%
import tempfile

import numpy as np
import scanpy as sc
import scvi

import scexceiver

MAX_EPOCHS = 10
scvi.settings.seed = 0

adata = scexceiver.datasets.pbmc3k()
adata

# %% [markdown]
# `X` holds raw UMI counts; the model normalises them itself (CP10k, log1p, per-gene
# z-score on the training cells, clip, +1). `obs["cell_type"]` holds labels **derived from
# marker genes** (see {func}`scexceiver.datasets.pbmc3k`), used here only to judge the
# embedding.
#
# ## Set up and train
#
# Register the counts (pass `layer="counts"` if they live in a layer, `batch_key=` to
# condition on batches, `gene_key="gene_ids"` to key genes by Ensembl ID), build the
# model and train it. Training uses a GPU (bf16) when one is present.

# %%
scexceiver.ExceiverModel.setup_anndata(adata)
model = scexceiver.ExceiverModel(adata)
model

# %%
model.train(max_epochs=MAX_EPOCHS, early_stopping=False, check_val_every_n_epoch=1)
ax = scexceiver.pl.training_curves(model)
# %% [markdown]
# ## Embeddings into the AnnData
#
# Cell embeddings (the latents, flattened) go to `obsm`, gene embeddings (rows of the
# gene table, aligned with `var`) to `varm`.

# %%
adata.obsm["X_exceiver"] = model.get_latent_representation()
adata.varm["exceiver_gene_embedding"] = model.get_gene_embeddings()
adata.obsm["X_exceiver"].shape, adata.varm["exceiver_gene_embedding"].shape

# %% [markdown]
# ## Neighbours, UMAP and Leiden clusters with scanpy

# %%
sc.pp.neighbors(adata, use_rep="X_exceiver")
sc.tl.umap(adata, random_state=0)
sc.tl.leiden(adata, key_added="leiden_exceiver", flavor="igraph", n_iterations=2)
sc.pl.umap(adata, color=["cell_type", "leiden_exceiver"], wspace=0.4)

# %% [markdown]
# How well do the latents separate the (marker-derived) cell types? A cross-validated
# kNN classifier on the embedding, against always guessing the largest class:

# %%
scexceiver.tl.knn_label_accuracy(adata.obsm["X_exceiver"], adata.obs["cell_type"].to_numpy())

# %% [markdown]
# ## Marker check
#
# Do the Leiden clusters of the Exceiver embedding express the classic PBMC markers?
# The dot plot shows the measured (log-normalised) expression per cluster.

# %%
markers = {
    "T": ["CD3E", "IL7R"],
    "CD8 T": ["CD8A"],
    "NK": ["GNLY", "NKG7"],
    "B": ["MS4A1", "CD79A"],
    "CD14 Mono": ["LYZ", "CD14"],
    "FCGR3A Mono": ["FCGR3A"],
    "Platelet": ["PPBP"],
}
normalised = sc.pp.normalize_total(adata, target_sum=1e4, inplace=False)["X"]
adata.layers["log_normalised"] = normalised.log1p()
sc.pl.dotplot(adata, markers, groupby="leiden_exceiver", layer="log_normalised")

# %% [markdown]
# The decoder can also reconstruct any gene from a cell's latents. Its prediction for the
# markers, averaged per (derived) cell type, should be highest in the matching type:

# %%
predicted = model.predict_expression(gene_list=[g for genes in markers.values() for g in genes])
predicted.groupby(adata.obs["cell_type"].to_numpy()).mean().round(2)

# %% [markdown]
# ## Save and reload
#
# The gene vocabulary and the normalisation statistics travel with the saved model, so a
# reloaded model embeds cells exactly as before.

# %%
with tempfile.TemporaryDirectory() as folder:
    model.save(folder, overwrite=True)
    reloaded = scexceiver.ExceiverModel.load(folder, adata=adata)
np.allclose(reloaded.get_latent_representation(), adata.obsm["X_exceiver"], atol=1e-5)

# %% [markdown]
# From the command line, the same pretraining and embedding of your own h5ad files is
# `scexceiver pretrain` and `scexceiver embed` (see {doc}`/cli`).
