"""Do gene embeddings agree with Gene Ontology? Exceiver vs co-expression vs random.

GO biological-process annotations come from Debian's ``r-bioc-org.hs.eg.db`` (read with
:mod:`sqlite3`; never a dependency of the package)::

    cd /tmp && apt-get download r-bioc-org.hs.eg.db && dpkg -x r-bioc-org.hs.eg.db_*.deb orgdb
    # -> /tmp/orgdb/usr/lib/R/site-library/org.Hs.eg.db/extdata/org.Hs.eg.sqlite

Genes: those of the bundled PBMC 3k detected in at least ``--min-cells`` cells (rarely
seen genes' embeddings barely move from their initialisation), mapped to GO through
their Ensembl IDs. Terms: direct GO BP annotations (``go_bp``, evidence ``ND``
excluded) with ``--min-term`` to ``--max-term`` of these genes (specific terms).

Metrics, for each gene similarity:

- ``auroc``: gene pairs sharing at least one of these terms (positives) against
  uniformly drawn pairs sharing none (negatives), scored by the similarity;
- ``knn_go_agreement``: over annotated genes, the fraction of their ``--k`` most similar
  annotated genes that share a term with them (and the chance level: the same for
  random neighbours).

Similarities: cosine of Exceiver gene embeddings (the default trained here on PBMC 3k
for ``--epochs`` per seed, and each ``--variant`` of it, or loaded with ``--model``),
Pearson correlation of log-normalised expression on the same cells (co-expression
baseline), and cosine of random Gaussian embeddings of the same width.

Usage::

    python benchmarks/gene_embeddings.py --go-sqlite /tmp/orgdb/.../org.Hs.eg.sqlite \
        --epochs 20 --seeds 0 1 --out benchmarks/results/gene_embeddings.json
    # variants of the default beside it: --variant key=value[,key=value]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import scvi
import torch
from scipy import sparse
from sklearn.metrics import roc_auc_score

import scexceiver

sys.path.insert(0, str(Path(__file__).parent))
import embedding_quality as eq


def go_terms(sqlite_path: str, ensembl_ids: pd.Index) -> dict[str, set[str]]:
    """GO BP terms (direct annotations, evidence other than ND) of each Ensembl ID."""
    query = (
        "SELECT e.ensembl_id, g.go_id FROM ensembl e JOIN go_bp g ON e._id = g._id "
        "WHERE g.evidence != 'ND'"
    )
    with sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True) as db:
        pairs = pd.DataFrame(db.execute(query).fetchall(), columns=["ensembl", "go"])
    pairs = pairs[pairs["ensembl"].isin(set(ensembl_ids))]
    return pairs.groupby("ensembl")["go"].agg(set).to_dict()


def annotation_matrix(
    genes: pd.Index, terms: dict[str, set[str]], min_term: int, max_term: int
) -> sparse.csr_matrix:
    """Genes x specific terms indicator (terms with min_term..max_term of the genes)."""
    rows, cols = [], []
    for i, gene in enumerate(genes):
        for term in terms.get(gene, ()):
            rows.append(i)
            cols.append(term)
    codes, names = pd.factorize(pd.Index(cols))
    m = sparse.csr_matrix((np.ones(len(rows)), (rows, codes)), shape=(len(genes), len(names)))
    sizes = np.asarray(m.sum(0)).ravel()
    return m[:, np.flatnonzero((sizes >= min_term) & (sizes <= max_term))].tocsr()


def evaluate(
    similarity: np.ndarray, shared: np.ndarray, annotated: np.ndarray, k: int, rng
) -> dict:
    """AUROC (sharing pairs vs random non-sharing pairs) and kNN GO agreement."""
    sub = similarity[np.ix_(annotated, annotated)]
    share = shared[np.ix_(annotated, annotated)]
    n = len(annotated)
    upper = np.triu_indices(n, 1)
    positive = share[upper]
    pos_scores = sub[upper][positive]
    i, j = rng.integers(0, n, size=(2, 20 * positive.sum()))
    keep = (i != j) & ~share[i, j]
    neg_scores = sub[i[keep], j[keep]]
    scores = np.concatenate([pos_scores, neg_scores])
    truth = np.concatenate([np.ones(pos_scores.size), np.zeros(neg_scores.size)])
    masked = sub.copy()
    np.fill_diagonal(masked, -np.inf)
    neighbours = np.argpartition(-masked, k, axis=1)[:, :k]
    agreement = share[np.arange(n)[:, None], neighbours].mean()
    return {
        "auroc": float(roc_auc_score(truth, scores)),
        "knn_go_agreement": float(agreement),
        "n_positive_pairs": int(pos_scores.size),
        "n_negative_pairs": int(neg_scores.size),
    }


def cosine(x: np.ndarray) -> np.ndarray:
    unit = x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
    return unit @ unit.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--go-sqlite", required=True, help="path to org.Hs.eg.sqlite")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--model", help="a saved ExceiverModel (genes matched by symbol)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also train the default with these arguments, e.g. n_presence_queries=128",
    )
    parser.add_argument("--no-default", action="store_true", help="variants only")
    parser.add_argument("--min-cells", type=int, default=30)
    parser.add_argument("--min-term", type=int, default=5)
    parser.add_argument("--max-term", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results/gene_embeddings.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)

    adata = scexceiver.datasets.pbmc3k()
    detected = np.asarray((adata.X > 0).sum(0)).ravel()
    genes = np.flatnonzero(detected >= args.min_cells)
    loaded = None
    if args.model:
        loaded = scexceiver.ExceiverModel.load(args.model, adata=adata)
        # a model pretrained on other panels may lack some PBMC 3k genes (NaN rows)
        known = np.isfinite(loaded.get_gene_embeddings(adata)).all(1)
        genes = genes[known[genes]]
    ensembl = pd.Index(adata.var["gene_ids"].astype(str)).take(genes)
    annotation = annotation_matrix(
        ensembl, go_terms(args.go_sqlite, ensembl), args.min_term, args.max_term
    )
    annotated = np.flatnonzero(np.asarray(annotation.sum(1)).ravel() > 0)
    shared = np.asarray((annotation @ annotation.T).todense()) > 0
    print(
        f"{genes.size} genes detected in >= {args.min_cells} cells; {annotated.size} with "
        f"{annotation.shape[1]} GO BP terms of {args.min_term}-{args.max_term} genes"
    )

    log_norm = adata.copy()
    sc.pp.normalize_total(log_norm, target_sum=1e4)
    sc.pp.log1p(log_norm)
    expression = log_norm.X[:, genes].toarray()
    rows = [{"method": "co-expression (Pearson of log CP10k)"}]
    rows[0].update(evaluate(np.corrcoef(expression.T), shared, annotated, args.k, rng))

    embeddings = []
    if loaded is not None:
        embeddings.append(("Exceiver (loaded)", loaded.get_gene_embeddings(adata)[genes], None))
    else:
        variants = eq.parse_variants(args.variant)
        if not args.no_default:
            variants = {"Exceiver default": {}} | variants
        scexceiver.ExceiverModel.setup_anndata(adata)
        for seed in args.seeds:
            for label, overrides in variants.items():
                scvi.settings.seed = seed
                model = scexceiver.ExceiverModel(adata, **overrides)
                start = time.perf_counter()
                model.train(
                    max_epochs=args.epochs, early_stopping=False, enable_progress_bar=False
                )
                seconds = time.perf_counter() - start
                name = f"{label}, seed {seed}, {args.epochs} epochs"
                embeddings.append((name, model.get_gene_embeddings()[genes], seconds))
    width = embeddings[0][1].shape[1]
    for name, table, seconds in embeddings:
        row = {"method": name, **evaluate(cosine(table), shared, annotated, args.k, rng)}
        if seconds is not None:
            row["train_seconds"] = round(seconds, 1)
        rows.append(row)
    random_table = rng.normal(size=(genes.size, width))
    rows.append(
        {
            "method": f"random Gaussian embeddings (width {width})",
            **evaluate(cosine(random_table), shared, annotated, args.k, rng),
        }
    )
    chance = shared[np.ix_(annotated, annotated)].mean()
    print(f"{'method':<70}{'AUROC':>8}{'kNN GO agreement':>18}")
    for r in rows:
        print(f"{r['method']:<70}{r['auroc']:>8.3f}{r['knn_go_agreement']:>18.3f}")
    print(f"chance kNN agreement (random annotated pair shares a term): {chance:.3f}")
    setup = {
        "data": "bundled 10x PBMC 3k, all 2,700 cells",
        "genes": int(genes.size),
        "annotated_genes": int(annotated.size),
        "go_terms": int(annotation.shape[1]),
        "min_cells": args.min_cells,
        "term_size": [args.min_term, args.max_term],
        "k": args.k,
        "chance_knn_agreement": float(chance),
        "go_source": "Debian r-bioc-org.hs.eg.db, table go_bp (direct), evidence != ND",
        "model": args.model or f"trained here, {args.epochs} epochs per seed",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"setup": setup, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
