"""Training from disk: peak memory and throughput as the corpus grows.

For each corpus size, writes a corpus made by resampling the bundled real PBMC 3k cells
(fresh seed per file, each count redrawn as Poisson(count x U(0.9, 1.1)); every other
file lacks the last 1,000 genes of the panel) as several h5ad files of at most
``--cells-per-file`` cells. A fresh process then opens them as one backed corpus
(``scexceiver.data.open_h5ad_corpus``), registers it, fits the gene statistics in one
streaming pass and trains the default model for ``--steps`` minibatches (a fraction of
an epoch; backed data are chunk-shuffled, the default), reporting its peak RSS and the
training throughput. It also times reading 50 minibatches alone, as random rows (one
h5py read per cell, ``read_cells_per_s``) and chunk-shuffled (one contiguous read per
block of rows, ``chunked_read_cells_per_s``). The files are deleted
afterwards.

Usage: python benchmarks/out_of_core.py --cells 250000 1000000 --steps 20 \
    --workdir /tmp/scexceiver_ooc --out benchmarks/results/out_of_core.json
"""

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import psutil
from scipy import sparse

import scexceiver

DROPPED_GENES = 1000


def write_corpus(n_cells: int, cells_per_file: int, folder: Path, seed: int) -> int:
    """Write ``n_cells`` resampled PBMC cells as h5ad files into ``folder``; files count."""
    pbmc = scexceiver.datasets.pbmc3k()
    folder.mkdir(parents=True, exist_ok=True)
    n_files = int(np.ceil(n_cells / cells_per_file))
    for f in range(n_files):
        rng = np.random.default_rng([seed, f])
        n = min(cells_per_file, n_cells - f * cells_per_file)
        parts = []
        for start in range(0, n, 20_000):
            rows = rng.integers(0, pbmc.n_obs, min(20_000, n - start))
            x = pbmc.X[rows].tocsr().astype(np.float32)
            x.data = rng.poisson(x.data * rng.uniform(0.9, 1.1, x.data.size)).astype(np.float32)
            x.eliminate_zeros()
            parts.append(x)
        x = sparse.vstack(parts, format="csr")
        obs = pd.DataFrame(index=[f"f{f}-c{i}" for i in range(n)])
        var = pbmc.var[["gene_ids"]]
        if f % 2:
            x, var = x[:, :-DROPPED_GENES], var.iloc[:-DROPPED_GENES]
        ad.AnnData(x, obs=obs, var=var).write_h5ad(folder / f"part{f:03d}.h5ad")
        del x, parts
    return n_files


def train_child(folder: str, steps: int, batch_size: int, seed: int) -> dict:
    """Open, register and train on the corpus in this (fresh) process; its measurements."""
    import lightning.pytorch as pl
    import scvi
    import torch

    torch.set_num_threads(2)
    scvi.settings.seed = seed
    t0 = time.perf_counter()
    corpus = scexceiver.data.open_h5ad_corpus(folder, Path(folder) / "corpus" / "all.h5ad")
    t_concat = time.perf_counter() - t0
    peak_after_concat = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    scexceiver.ExceiverModel.setup_anndata(corpus, gene_panel_key="source")
    model = scexceiver.ExceiverModel(corpus)

    class Clock(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.start = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 5:
                self.warm = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end, self.last = time.perf_counter(), batch_idx

    clock = Clock()
    t1 = time.perf_counter()
    model.train(
        max_epochs=1,
        accelerator="cpu",
        batch_size=batch_size,
        train_size=0.99,
        limit_train_batches=steps,
        limit_val_batches=5,
        early_stopping=False,
        check_val_every_n_epoch=1,
        enable_progress_bar=False,
        callbacks=[clock],
    )
    timed_batches = clock.last - 5 + 1
    # the data path alone: 50 minibatches read from disk and tokenised, as random rows
    # (one read per cell) and chunk-shuffled (one contiguous read per block of rows)
    rows = np.random.default_rng(seed).choice(corpus.n_obs, 50 * batch_size, replace=False)
    random_rows = model._make_data_loader(adata=corpus, indices=rows, batch_size=batch_size)
    chunked = model._make_data_loader(
        adata=corpus, batch_size=batch_size, shuffle=True, chunked=True
    )
    read_cells_per_s = _read_rate(random_rows, 50)
    chunked_read_cells_per_s = _read_rate(chunked, 50)
    return {
        "cells": corpus.n_obs,
        "genes": corpus.n_vars,
        "x_nonzeros": int(corpus.X.group["data"].shape[0]),
        "concat_s": round(t_concat, 1),
        "statistics_and_setup_s": round(clock.start - t1, 1),
        "train_steps": clock.last + 1,
        "cells_per_s": round(timed_batches * batch_size / (clock.end - clock.warm), 1),
        "read_cells_per_s": round(read_cells_per_s, 1),
        "chunked_read_cells_per_s": round(chunked_read_cells_per_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "peak_rss_after_concat_gb": round(peak_after_concat, 3),
        "rss_end_gb": round(psutil.Process().memory_info().rss / 2**30, 3),
        "final_train_loss": float(model.history["train_loss"].to_numpy().ravel()[-1]),
    }


def _read_rate(loader, n_batches: int) -> float:
    """Cells per second of the first ``n_batches`` minibatches of ``loader``."""
    start, n_read = time.perf_counter(), 0
    for i, tensors in enumerate(loader):
        n_read += int(tensors["gene_idx"].shape[0])
        if i + 1 == n_batches:
            break
    return n_read / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--cells-per-file", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/scexceiver_ooc")
    parser.add_argument("--out", default="benchmarks/results/out_of_core.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(train_child(args.child, args.steps, args.batch_size, args.seed)))
        return
    rows = []
    for n_cells in args.cells:
        folder = Path(args.workdir) / f"cells_{n_cells}"
        try:
            t0 = time.perf_counter()
            n_files = write_corpus(n_cells, args.cells_per_file, folder, args.seed + n_cells)
            write_s = time.perf_counter() - t0
            disk_gb = sum(p.stat().st_size for p in folder.glob("*.h5ad")) / 2**30
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--seed", str(args.seed)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row.update(files=n_files, write_s=round(write_s, 1), files_gb=round(disk_gb, 2))
            rows.append(row)
            print(row, flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    table = pd.DataFrame(rows)[
        ["cells", "files", "files_gb", "genes", "concat_s", "statistics_and_setup_s",
         "train_steps", "cells_per_s", "read_cells_per_s", "chunked_read_cells_per_s",
         "peak_rss_gb"]
    ]  # fmt: skip
    print(table.to_string(index=False))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
