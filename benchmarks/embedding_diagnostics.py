"""Where a cell embedding loses cell types: per-label F1, linear probes and effective rank.

Complements ``embedding_quality.py`` (same datasets, loaders and HVGs) on one seed and a
fixed epoch count, so variants compare at equal training rather than equal wall time.
For PCA on HVGs, optionally scVI, the Exceiver default and ``--variant key=value``
variants it reports:

- ``knn_macro_f1`` and ``knn_f1_per_label``: 5-fold kNN (``scexceiver.tl``);
- ``probe_f1_per_label``: 5-fold one-vs-rest logistic regression (class-balanced) on
  the standardised embedding's top 50 PCs, so a label the kNN misses because of the
  distance scale but the embedding still encodes shows up here;
- ``batch_mixing`` (``scexceiver.tl.batch_mixing``, 0 separated, 1 as mixed as chance);
- ``pcs_90`` / ``pcs_99``: principal components holding 90 % / 99 % of the embedding's
  variance, its effective dimension;
- ``shared_across_latents`` (Exceiver, flattened readout): the fraction of the
  embedding's cell-to-cell variance that is the same in every latent (the mean over
  latents), 1 when the latents are copies of one vector plus constants;
- ``reconstruction_by_detection`` (Exceiver): every panel gene hidden from the encoder,
  100 at a time, and predicted for the validation cells as ``predict_expression``
  does; per bin of detection rate, the median Pearson correlation with the observed
  value and the share of genes predicted better than by their training mean.

Usage::

    python benchmarks/embedding_diagnostics.py --dataset kang --epochs 30 --threads 1 \
        --scvi-minutes 4 --variant latent_kl=3 \
        --out benchmarks/results/embedding_diagnostics_kang.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

sys.path.insert(0, str(Path(__file__).parent))
import embedding_quality as eq

import scexceiver
from scexceiver.model._presets import resolve_preset


def probe_f1(embedding: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Per-label F1 of a cross-validated logistic regression on the top 50 PCs."""
    scaled = (embedding - embedding.mean(0)) / (embedding.std(0) + 1e-6)
    pcs = PCA(min(50, *scaled.shape), random_state=seed).fit_transform(scaled)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    probe = LogisticRegression(max_iter=2000, class_weight="balanced")
    predicted = cross_val_predict(probe, pcs, labels, cv=folds)
    names = np.unique(labels)
    scores = f1_score(labels, predicted, labels=names, average=None)
    return {str(n): float(s) for n, s in zip(names, scores, strict=True)}


def effective_rank(embedding: np.ndarray) -> dict[str, int]:
    """Principal components holding 90 % and 99 % of the variance."""
    centred = embedding - embedding.mean(0)
    explained = np.linalg.svd(centred, compute_uv=False) ** 2
    cumulative = np.cumsum(explained) / explained.sum()
    return {
        "pcs_90": int(np.searchsorted(cumulative, 0.90) + 1),
        "pcs_99": int(np.searchsorted(cumulative, 0.99) + 1),
    }


def shared_across_latents(embedding: np.ndarray, n_latents: int) -> float:
    """Fraction of the cell-to-cell variance equal in every latent (their mean)."""
    centred = embedding - embedding.mean(0)
    per_latent = centred.reshape(len(centred), n_latents, -1)
    off_mean = per_latent - per_latent.mean(1, keepdims=True)
    return float(1.0 - np.square(off_mean).sum() / np.square(per_latent).sum())


#: Detection-rate bins (fraction of cells) of the reconstruction diagnostic.
DETECTION_BINS = (0.0, 0.02, 0.1, 0.3, 1.0)


def reconstruction_by_detection(model, chunk: int = 100, seed: int = 0) -> dict[str, dict]:
    """Held-out reconstruction of every gene, by how often the gene is detected.

    Each gene of the model's panel is hidden from the encoder, ``chunk`` random genes at a
    time (about the training mask's share of a cell's genes), and predicted for the
    model's validation cells as :meth:`~scexceiver.ExceiverModel.predict_expression`
    does; per detection bin, the median Pearson correlation with the observed value and
    the fraction of genes predicted better than by their training mean.
    """
    genes = np.random.default_rng(seed).permutation(model.adata.var_names.to_numpy())
    table = pd.concat(
        scexceiver.tl.reconstruction_quality(model, genes[i : i + chunk])
        for i in range(0, len(genes), chunk)
    )
    labels = [f"{a:.2f}-{b:.2f}" for a, b in itertools.pairwise(DETECTION_BINS)]
    bins = pd.cut(table["detected"], DETECTION_BINS, labels=labels, include_lowest=True)
    summary = {}
    for label, part in table.groupby(bins, observed=True):
        summary[label] = {
            "genes": len(part),
            "median_pearson": float(part["pearson"].median()),
            "beats_gene_mean": float((part["mse"] < part["gene_mean_mse"]).mean()),
        }
    return summary


def diagnose(embedding: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> dict:
    knn = scexceiver.tl.knn_label_accuracy(embedding, labels)
    return {
        "knn_macro_f1": knn["macro_f1"],
        "knn_f1_per_label": knn["f1_per_label"],
        "probe_f1_per_label": probe_f1(embedding, labels),
        "batch_mixing": scexceiver.tl.batch_mixing(embedding, batches),
        **effective_rank(embedding),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["kang", "pbmc_2tech", "wu"], default="kang")
    parser.add_argument("--epochs", type=int, default=30, help="Exceiver epochs (fixed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", action="append", default=[], help="e.g. latent_kl=3")
    parser.add_argument("--no-default", action="store_true", help="variants only")
    parser.add_argument("--scvi-minutes", type=float, default=0.0, help="0 skips scVI")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", default="benchmarks/results/embedding_diagnostics.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)

    loaders = {
        "kang": lambda: eq.load_kang(1500, 0),
        "pbmc_2tech": lambda: eq.load_pbmc_2tech(None, 0),
        "wu": eq.load_wu,
    }
    adata = eq.prepare(loaders[args.dataset]())
    labels = adata.obs["cell_type"].to_numpy().astype(str)
    batches = adata.obs["batch"].to_numpy().astype(str)
    rows = [{"method": "PCA", **diagnose(adata.obsm["PCA"], labels, batches)}]
    if args.scvi_minutes > 0:
        z, info = eq.train_scvi(adata, args.seed, timedelta(minutes=args.scvi_minutes))
        rows.append({"method": "scVI", **info, **diagnose(z, labels, batches)})
    methods = {"Exceiver default": {}} | eq.parse_variants(args.variant)
    if args.no_default:
        methods.pop("Exceiver default")
    for name, overrides in methods.items():
        z, info, model = eq.train_exceiver(
            adata, args.seed, timedelta(hours=24), args.epochs, "default", overrides, "hvg"
        )
        config = resolve_preset("default", **overrides)
        row = {"method": name, **info, **diagnose(z, labels, batches)}
        row["reconstruction_by_detection"] = reconstruction_by_detection(model)
        if config["readout"] == "flatten":
            row["shared_across_latents"] = shared_across_latents(z, config["n_latents"])
        rows.append(row)
        print(f"  trained {name}: {info}", flush=True)

    names = sorted(set(labels), key=lambda n: (labels == n).sum())
    counts = {n: int((labels == n).sum()) for n in names}
    print(f"\n{args.dataset}, seed {args.seed}; kNN F1 per label (cells):")
    print(f"{'method':<34}" + "".join(f"{n[:10]:>11}" for n in names) + f"{'macro':>8}")
    print(f"{'':<34}" + "".join(f"{'(' + str(counts[n]) + ')':>11}" for n in names))
    for r in rows:
        cells = "".join(f"{r['knn_f1_per_label'][n]:>11.3f}" for n in names)
        print(f"{r['method']:<34}{cells}{r['knn_macro_f1']:>8.3f}")
    print(f"\n{'method':<34}{'probe F1, rarest':>17}{'mixing':>8}{'PCs 90/99':>11}{'shared':>8}")
    for r in rows:
        shared = r.get("shared_across_latents")
        print(
            f"{r['method']:<34}{r['probe_f1_per_label'][names[0]]:>17.3f}"
            f"{r['batch_mixing']:>8.3f}{r['pcs_90']:>6}/{r['pcs_99']:<4}"
            + (f"{shared:>8.3f}" if shared is not None else "")
        )
    print("\nheld-out reconstruction by detection rate: median Pearson / share beating the mean")
    for r in rows:
        if "reconstruction_by_detection" in r:
            cells = "  ".join(
                f"{b} ({v['genes']}): {v['median_pearson']:.3f} / {v['beats_gene_mean']:.2f}"
                for b, v in r["reconstruction_by_detection"].items()
            )
            print(f"{r['method']:<34}{cells}")
    setup = {
        "dataset": args.dataset,
        "seed": args.seed,
        "exceiver_epochs": args.epochs,
        "scvi_minutes": args.scvi_minutes,
        "genes": "2,000 HVGs (embedding_quality.prepare)",
        "label_counts": counts,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": setup, "results": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
