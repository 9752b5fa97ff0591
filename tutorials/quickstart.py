# %% [markdown]
# # Quick start: Exceiver on PBMC 3k
#
# A jupytext "percent" script: run it with `python tutorials/quickstart.py` or open it as
# a notebook with jupytext. It trains the default model on the bundled 10x PBMC 3k raw
# counts (about 3 minutes on 2 CPU cores), embeds the cells and genes, and looks at them
# with scanpy.

# %%
import numpy as np
import scanpy as sc

import scexceiver

adata = scexceiver.datasets.pbmc3k()
adata

# %% [markdown]
# Register the raw counts (here in `X`; pass `layer="counts"` if they live in a layer,
# and `batch_key=` to condition on batches), build the model and train it.

# %%
scexceiver.ExceiverModel.setup_anndata(adata)
model = scexceiver.ExceiverModel(adata)
model.train(max_epochs=20)
scexceiver.pl.training_curves(model)

# %% [markdown]
# Cell embeddings go to `obsm`, gene embeddings to `varm`, and scanpy takes it from there.

# %%
adata.obsm["X_exceiver"] = model.get_latent_representation()
adata.varm["exceiver_gene_embedding"] = model.get_gene_embeddings()
sc.pp.neighbors(adata, use_rep="X_exceiver")
sc.tl.umap(adata)
sc.tl.leiden(adata, key_added="leiden_exceiver", flavor="igraph", n_iterations=2)
sc.pl.umap(adata, color=["cell_type", "leiden_exceiver"])

# %% [markdown]
# How well do the embeddings separate the (marker-derived) cell types? Compare with the
# kNN accuracy of always guessing the largest class.

# %%
scexceiver.tl.knn_label_accuracy(adata.obsm["X_exceiver"], adata.obs["cell_type"].to_numpy())

# %% [markdown]
# Marker check: the decoder's reconstruction of classic markers per cell type.

# %%
markers = ["CD3E", "MS4A1", "LYZ", "GNLY", "FCGR3A", "PPBP"]
predicted = model.predict_expression(gene_list=markers)
predicted.groupby(adata.obs["cell_type"].to_numpy()).mean().round(2)

# %% [markdown]
# Save the model; the gene vocabulary and normalisation statistics travel with it.

# %%
model.save("pbmc3k_exceiver", overwrite=True)
reloaded = scexceiver.ExceiverModel.load("pbmc3k_exceiver", adata=adata)
np.allclose(reloaded.get_latent_representation(), adata.obsm["X_exceiver"])
