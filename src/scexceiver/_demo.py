"""The main job: train on the bundled PBMC 3k, write embeddings, pictures and a report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
import scvi
from anndata import AnnData

from . import datasets, pl, tl
from ._write import store
from .model import ExceiverModel


def pca_embedding(adata: AnnData, n_comps: int = 50, n_top_genes: int = 2000) -> np.ndarray:
    """Baseline embedding: PCA of scaled log-normalised highly variable genes."""
    baseline = adata.copy()
    sc.pp.normalize_total(baseline, target_sum=1e4)
    sc.pp.log1p(baseline)
    sc.pp.highly_variable_genes(baseline, n_top_genes=n_top_genes)
    baseline = baseline[:, baseline.var["highly_variable"]].copy()
    sc.pp.scale(baseline, max_value=10)
    sc.pp.pca(baseline, n_comps=n_comps)
    return baseline.obsm["X_pca"]


def run_demo(out: str | Path, *, max_epochs: int = 20, seed: int = 0) -> dict:
    """Train the default model on PBMC 3k and write results to ``out``.

    Writes ``pbmc3k_exceiver.h5ad`` (``obsm["X_exceiver"]``, ``varm[
    "exceiver_gene_embedding"]``, UMAPs), ``umap.png``, ``training.png``,
    ``report.txt`` / ``report.json`` and the trained model in ``model/``.

    Parameters
    ----------
    out
        Output folder (created; existing files of the same names are replaced).
    max_epochs
        Training epochs.
    seed
        Seed of scvi-tools (data split, initialisation, masks).

    Returns
    -------
    The report as a dict.
    """
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scvi.settings.seed = seed
    adata = datasets.pbmc3k()
    ExceiverModel.setup_anndata(adata)
    model = ExceiverModel(adata)
    train_start = time.perf_counter()
    model.train(max_epochs=max_epochs, early_stopping=False, check_val_every_n_epoch=1)
    train_seconds = time.perf_counter() - train_start

    store(adata, "obsm", "X_exceiver", model.get_latent_representation())
    store(adata, "varm", "exceiver_gene_embedding", model.get_gene_embeddings())
    store(adata, "obsm", "X_pca_hvg", pca_embedding(adata))
    labels = adata.obs["cell_type"].to_numpy()
    knn = tl.knn_label_accuracy(adata.obsm["X_exceiver"], labels)
    knn_pca = tl.knn_label_accuracy(adata.obsm["X_pca_hvg"], labels)
    error = model.get_reconstruction_error(indices=model.validation_indices)

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, rep, title in zip(
        axes, ("X_exceiver", "X_pca_hvg"), ("Exceiver latents", "PCA on 2,000 HVGs"), strict=True
    ):
        sc.pp.neighbors(adata, use_rep=rep, key_added=rep)
        sc.tl.umap(adata, neighbors_key=rep, random_state=seed)
        store(adata, "obsm", f"X_umap_{rep}", adata.obsm.pop("X_umap"))
        sc.pl.embedding(
            adata, basis=f"X_umap_{rep}", color="cell_type", ax=ax, show=False, title=title
        )
    fig.tight_layout()
    fig.savefig(out / "umap.png", dpi=120)
    plt.close(fig)
    ax = pl.training_curves(model)
    ax.figure.tight_layout()
    ax.figure.savefig(out / "training.png", dpi=120)
    plt.close(ax.figure)

    history = model.history
    report = {
        "dataset": "10x PBMC 3k (bundled), 2,700 cells x 32,738 genes; labels derived by markers",
        "model": model._model_summary_string,
        "epochs": max_epochs,
        "train_seconds": round(train_seconds, 1),
        "train_loss_first_last": [
            float(history["train_loss"]["train_loss"].iloc[i]) for i in (0, -1)
        ],
        "validation_loss_first_last": [
            float(history["validation_loss"]["validation_loss"].iloc[i]) for i in (0, -1)
        ],
        "validation_masked_mse": error["masked_mse"],
        "validation_gene_mean_mse": error["gene_mean_mse"],
        "validation_masked_mse_log": error["masked_mse_log"],
        "validation_gene_mean_mse_log": error["gene_mean_mse_log"],
        "knn_accuracy_exceiver": knn["accuracy"],
        "knn_macro_f1_exceiver": knn["macro_f1"],
        "knn_accuracy_pca": knn_pca["accuracy"],
        "knn_macro_f1_pca": knn_pca["macro_f1"],
        "majority_class_rate": knn["majority"],
    }
    store(
        adata, "uns", "exceiver_demo", {k: v for k, v in report.items() if not isinstance(v, list)}
    )
    adata.write_h5ad(out / "pbmc3k_exceiver.h5ad", compression="gzip")
    model.save(out / "model", overwrite=True)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.txt").write_text(format_report(report))
    return report


def format_report(r: dict) -> str:
    """The demo report as text."""
    return "\n".join(
        [
            "scexceiver demo: Exceiver (default preset) on 10x PBMC 3k",
            f"model: {r['model']}",
            f"training: {r['epochs']} epochs in {r['train_seconds']} s; train loss "
            f"{r['train_loss_first_last'][0]:.3f} -> {r['train_loss_first_last'][1]:.3f}, "
            f"validation loss {r['validation_loss_first_last'][0]:.3f} -> "
            f"{r['validation_loss_first_last'][1]:.3f}",
            "masked-gene MSE on validation cells (model vs predicting each gene's mean): "
            f"{r['validation_masked_mse_log']:.3f} vs {r['validation_gene_mean_mse_log']:.3f} "
            f"in log1p(CP10k) units, {r['validation_masked_mse']:.3f} vs "
            f"{r['validation_gene_mean_mse']:.3f} in per-gene standardised units",
            "cell-type kNN (15 neighbours, 5-fold CV; labels derived by markers):",
            f"  Exceiver latents  accuracy {r['knn_accuracy_exceiver']:.3f}  "
            f"macro-F1 {r['knn_macro_f1_exceiver']:.3f}",
            f"  PCA on HVGs       accuracy {r['knn_accuracy_pca']:.3f}  "
            f"macro-F1 {r['knn_macro_f1_pca']:.3f}",
            f"  majority class    accuracy {r['majority_class_rate']:.3f}",
            f"total wall time: {r['total_seconds']} s",
            "",
        ]
    )
