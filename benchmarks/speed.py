"""Speed benchmarks of scexceiver on real PBMC 3k counts: tables on stdout, JSON in results/.

Usage::

    python benchmarks/speed.py [--quick] [--device cpu|cuda] [--sections panel scvi ...]

Sections (all by default):

- ``kernels``: which SDPA backends run the masked attention of the default model.
- ``panel``: training cells/s and peak memory of the default (sparse) model, its dense
  twin (same K/d/L, every gene a token) and the ``paper`` preset, on PBMC 3k subset to
  its 2k / 5k / 15k / 33k most detected genes.
- ``scvi``: seconds per training epoch of ExceiverModel (with and without length
  bucketing and a ``max_genes`` cap) and ``scvi.model.SCVI`` on the same cells, genes and
  device, timed by a callback from the first to the last training batch of each epoch
  (no trainer set-up, no validation); plus validation masked MSE of each Exceiver run.
- ``embed``: ``get_latent_representation`` cells/s at batch sizes 64 to 1024.
- ``genes``: training cells/s as expressed genes per cell grow (500 to 4k; cells built
  by pooling real cells' counts, then keeping that many of the pooled cell's genes).
- ``cells``: training cells/s through the data loader for 10k, 100k and 1M cells made by
  resampling real cells (Poisson-perturbed counts); a fixed number of steps each.
- ``loader``: seconds per batch of the data loader alone (collation), by worker count.

Every timing has a warm-up and reports the median of several repeats; FLOPs are counted
analytically (``_flops.py``). Compare ratios within one run: absolute numbers depend on
the machine and its load.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import re
import statistics
import time
from pathlib import Path

import anndata
import numpy as np
import scvi
import torch
from _flops import peak_flops, train_flops_per_cell
from lightning.pytorch.callbacks import Callback
from scipy import sparse

import scexceiver
from scexceiver.data import ExceiverDataLoader, gene_statistics, tokenize_counts
from scexceiver.model._presets import resolve_preset
from scexceiver.module import ExceiverModule

RESULTS = Path(__file__).parent / "results"


# ----------------------------------------------------------------------------- helpers


def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU model or CPU model and thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found.group(1).strip() if found else model
    return f"{model} ({torch.get_num_threads()} threads)"


class PeakMemory:
    """Peak memory above the level at :meth:`start`: CUDA allocator or process RSS (MB)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            # hand freed heap memory back to the OS, so that new allocations show in RSS,
            # then reset the kernel's peak-RSS counter (VmHWM) of this process
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self.base = _proc_status("VmRSS")

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        return (_proc_status("VmHWM") - self.base) / 2**20


def _proc_status(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device: torch.device, precision: str):
    """bf16 autocast context for ``precision="bf16"``, a no-op otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_module(
    n_genes: int, stats, preset: str, device: torch.device, **overrides
) -> ExceiverModule:
    torch.manual_seed(0)
    config = resolve_preset(preset, **overrides)
    module = ExceiverModule(n_genes, 0, **config)
    module.fit_statistics(stats)
    module.config = config
    return module.to(device)


def to_device(tokens: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in tokens.items()}


def time_train_steps(module, batches, device, precision, warmup, repeats):
    """Median seconds per optimiser step over ``batches`` (cycled) and peak memory (MB)."""
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    module.train()

    def step(batch):
        with autocast(device, precision):
            _, _, loss_output = module(batch)
        loss_output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    meter = PeakMemory(device)
    meter.start()
    for i in range(warmup):
        step(batches[i % len(batches)])
    times = []
    for i in range(repeats):
        batch = batches[(warmup + i) % len(batches)]
        sync(device)
        start = time.perf_counter()
        step(batch)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), meter.peak_mb()


def n_queries(module, n_tokens: float) -> float:
    """Decoder queries per cell of a training step."""
    n_mask = min(int(module.n_mask), n_tokens // 2)
    visible = min(module.n_visible_queries, max(n_tokens - n_mask, 0))
    return n_mask + visible + module.n_random_queries


def encoder_tokens(module, batch: dict) -> float:
    """Encoder keys per cell actually computed: the padded width (+ a null token)."""
    if module.token_mode == "dense":
        width = module.n_genes
    else:
        width = batch["gene_idx"].shape[1]
        if module.max_genes is not None:
            width = min(width, module.max_genes)
    return width + int(module.network.null_token is not None)


def top_genes(adata: anndata.AnnData, n: int) -> anndata.AnnData:
    detected = np.asarray((adata.X > 0).sum(0)).ravel()
    keep = np.sort(np.argsort(-detected, kind="stable")[:n])
    return adata[:, keep].copy()


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, float):
                v = f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
            cells.append(str(v))
        print("| " + " | ".join(cells) + " |")


def achieved(flops_per_cell: float, cells_per_s: float, peak: float | None) -> dict:
    out = {"train_gflop_per_cell": flops_per_cell / 1e9}
    out["achieved_tflops"] = flops_per_cell * cells_per_s / 1e12
    if peak is not None:
        out["fraction_of_bf16_peak"] = flops_per_cell * cells_per_s / peak
    return out


# ---------------------------------------------------------------------------- sections


def section_kernels(adata, device, args) -> list[dict]:
    """Which SDPA backends run the default model's masked encoder (forward pass)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    small = top_genes(adata, 2000)
    module = make_module(small.n_vars, gene_statistics(small.X), "default", device)
    module.eval()
    batch = to_device(tokenize_counts(small.X[:64]), device)
    rows = []
    for backend in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.MATH,
    ):
        try:
            with torch.no_grad(), sdpa_kernel(backend), autocast(device, args.precision):
                module(batch)
            ok = "yes"
        except RuntimeError as error:
            ok = f"no ({str(error).splitlines()[0][:60]})"
        rows.append({"backend": backend.name, "runs_masked_attention": ok})
    with torch.no_grad(), torch.profiler.profile() as prof, autocast(device, args.precision):
        module(batch)
    used = sorted(
        {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and "_" in e.key}
    )
    rows.append({"backend": "chosen by default", "runs_masked_attention": ", ".join(used)})
    print_table("SDPA backends (default model, boolean key mask)", rows, list(rows[0]))
    return rows


def section_panel(adata, device, args) -> list[dict]:
    """Sparse default vs its dense twin vs the paper preset across gene panels."""
    panels = [2000, 32738] if args.quick else [2000, 5000, 15000, 32738]
    rng = np.random.default_rng(0)
    peak = peak_flops(device_name(device))
    variants = {
        "default (sparse)": ("default", {}),
        "default, dense twin": (
            "default",
            {
                "token_mode": "dense",
                "dense_mask": "boolean",
                "n_visible_queries": 0,
                "n_random_queries": 0,
            },
        ),
        "paper (dense)": ("paper", {}),
    }
    rows = []
    for n_genes in panels:
        sub = top_genes(adata, n_genes)
        stats = gene_statistics(sub.X)
        cells = [rng.choice(sub.n_obs, args.panel_batch, replace=False) for _ in range(3)]
        batches = [to_device(tokenize_counts(sub.X[np.sort(c)]), device) for c in cells]
        for name, (preset, overrides) in variants.items():
            module = make_module(n_genes, stats, preset, device, **overrides)
            step_s, mem = time_train_steps(
                module, batches, device, args.precision, args.warmup, args.repeats
            )
            n_tok = statistics.mean(encoder_tokens(module, b) for b in batches)
            expressed = statistics.mean(
                float(b["token_mask"].sum(1).float().mean()) for b in batches
            )
            flops = train_flops_per_cell(module.config, n_tok, n_queries(module, expressed))
            cells_s = args.panel_batch / step_s
            rows.append(
                {
                    "genes": n_genes,
                    "model": name,
                    "cells_per_s": cells_s,
                    "step_s": step_s,
                    "peak_mem_mb": mem,
                    "tokens_per_cell": n_tok,
                    **achieved(flops, cells_s, peak),
                }
            )
            del module
        base = {r["model"]: r for r in rows if r["genes"] == n_genes}
        for r in rows:
            if r["genes"] == n_genes:
                r["sparse_speedup"] = base["default (sparse)"]["cells_per_s"] / r["cells_per_s"]
    print_table(
        f"Training throughput by gene panel (batch {args.panel_batch})",
        rows,
        ["genes", "model", "cells_per_s", "peak_mem_mb", "tokens_per_cell",
         "train_gflop_per_cell", "achieved_tflops", "sparse_speedup"],
    )  # fmt: skip
    return rows


class EpochTimer(Callback):
    """Seconds from the start of each training epoch to the end of its last batch."""

    def __init__(self) -> None:
        self.epochs: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(self.last - self.start)


def section_scvi(adata, device, args, store: dict) -> list[dict]:
    """Per-epoch time of ExceiverModel variants and scVI; validation masked MSE."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    epochs = args.epochs
    precision = "bf16-mixed" if args.precision == "bf16" else "32-true"
    runs = {
        "exceiver default": ({}, {}),
        "exceiver + length_bucketing": ({}, {"length_bucketing": True}),
        "exceiver + bucketing + max_genes=500": ({"max_genes": 500}, {"length_bucketing": True}),
    }
    if args.quick:
        runs = dict(list(runs.items())[:2])
    rows = []
    for name, (model_kwargs, train_kwargs) in runs.items():
        scvi.settings.seed = 0
        data = adata.copy()
        scexceiver.ExceiverModel.setup_anndata(data)
        model = scexceiver.ExceiverModel(data, **model_kwargs)
        timer = EpochTimer()
        model.train(
            max_epochs=epochs,
            accelerator=accelerator,
            devices=1,
            precision=precision,
            early_stopping=False,
            check_val_every_n_epoch=epochs,
            enable_progress_bar=False,
            callbacks=[timer],
            **train_kwargs,
        )
        val = model.validation_indices
        error = model.get_reconstruction_error(indices=val, batch_size=256)
        row = {
            "model": name,
            "epoch_s": statistics.median(timer.epochs[1:] or timer.epochs),
            "epochs_timed": len(timer.epochs[1:] or timer.epochs),
            "val_masked_mse": error["masked_mse"],
            "val_gene_mean_mse": error["gene_mean_mse"],
        }
        if model.module.max_genes is not None:
            cap = model.module.max_genes
            model.module.max_genes = None
            row["val_masked_mse_uncapped_input"] = model.get_reconstruction_error(
                indices=val, batch_size=256
            )["masked_mse"]
            model.module.max_genes = cap
        rows.append(row)
        if name == "exceiver default":
            store["trained"] = model
    scvi.settings.seed = 0
    data = adata.copy()
    scvi.model.SCVI.setup_anndata(data)
    reference = scvi.model.SCVI(data)
    timer = EpochTimer()
    reference.train(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        train_size=0.9,
        enable_progress_bar=False,
        callbacks=[timer],
    )
    rows.append(
        {
            "model": "scvi.model.SCVI",
            "epoch_s": statistics.median(timer.epochs[1:] or timer.epochs),
            "epochs_timed": len(timer.epochs[1:] or timer.epochs),
        }
    )
    scvi_epoch = rows[-1]["epoch_s"]
    for r in rows:
        r["epoch_vs_scvi"] = r["epoch_s"] / scvi_epoch
    print_table(
        f"Training epoch time on PBMC 3k ({adata.n_obs} cells x {adata.n_vars} genes, "
        f"90% train, {epochs} epochs, first excluded)",
        rows,
        ["model", "epoch_s", "epoch_vs_scvi", "val_masked_mse",
         "val_masked_mse_uncapped_input", "val_gene_mean_mse"],
    )  # fmt: skip
    return rows


def section_compile(adata, device, args) -> list[dict]:
    """Training step time of the network eager vs ``torch.compile(dynamic=True)``."""
    rng = np.random.default_rng(0)
    stats = gene_statistics(adata.X)
    cells = [rng.choice(adata.n_obs, 64, replace=False) for _ in range(4)]
    batches = [to_device(tokenize_counts(adata.X[np.sort(c)]), device) for c in cells]
    rows = []
    for name in ("eager", "torch.compile"):
        module = make_module(adata.n_vars, stats, "default", device)
        started = time.perf_counter()
        if name == "torch.compile":
            module.network = torch.compile(module.network, dynamic=True)
        step_s, _ = time_train_steps(
            module, batches, device, args.precision, len(batches), 2 * args.repeats
        )
        rows.append(
            {
                "mode": name,
                "step_s": round(step_s, 4),
                "warmup_and_timing_s": round(time.perf_counter() - started, 1),
            }
        )
    rows[1]["speedup"] = round(rows[0]["step_s"] / rows[1]["step_s"], 2)
    print_table("torch.compile (default model, batch 64, PBMC 3k)", rows, list(rows[1]))
    return rows


def section_embed(adata, device, args, store: dict) -> list[dict]:
    """Embedding cells/s of a trained default model by batch size."""
    model = store.get("trained")
    if model is None:
        data = adata.copy()
        scexceiver.ExceiverModel.setup_anndata(data)
        model = scexceiver.ExceiverModel(data)
        model.module.fit_statistics(gene_statistics(data.X))
    model.module.to(device)
    sizes = [64, 256, 1024] if args.quick else [64, 128, 256, 512, 1024]
    cells = np.arange(1024 if device.type == "cpu" else model.adata.n_obs)
    rows = []
    for batch_size in sizes:
        model.get_latent_representation(indices=cells, batch_size=batch_size)
        times = []
        for _ in range(max(args.repeats - 1, 1)):
            sync(device)
            start = time.perf_counter()
            model.get_latent_representation(indices=cells, batch_size=batch_size)
            sync(device)
            times.append(time.perf_counter() - start)
        rows.append(
            {"batch_size": batch_size, "cells_per_s": cells.size / statistics.median(times)}
        )
    print_table(
        f"Embedding throughput (get_latent_representation, {cells.size} cells, "
        "data loading included)",
        rows,
        ["batch_size", "cells_per_s"],
    )
    return rows


def pooled_cells(adata, n_cells: int, n_expressed: int, rng) -> sparse.csr_matrix:
    """Cells with exactly ``n_expressed`` expressed genes, from pooled real cells.

    Each cell sums the counts of random real cells until at least ``n_expressed`` genes
    are detected, then keeps a random ``n_expressed`` of them.
    """
    x = adata.X.tocsr()
    rows = []
    for _ in range(n_cells):
        pooled = sparse.csr_matrix((1, x.shape[1]), dtype=np.float32)
        while pooled.nnz < n_expressed:
            pooled = pooled + x[rng.integers(x.shape[0])]
        keep = rng.choice(pooled.nnz, n_expressed, replace=False)
        mask = np.zeros(pooled.nnz, dtype=bool)
        mask[keep] = True
        pooled.data = np.where(mask, pooled.data, 0)
        pooled.eliminate_zeros()
        rows.append(pooled)
    return sparse.vstack(rows).tocsr()


def section_genes(adata, device, args) -> list[dict]:
    """Training cells/s and memory of the default model by expressed genes per cell."""
    rng = np.random.default_rng(0)
    stats = gene_statistics(adata.X)
    peak = peak_flops(device_name(device))
    batch_size = args.panel_batch
    rows = []
    for n_expr in [500, 1000, 2000, 4000]:
        x = pooled_cells(adata, batch_size * 2, n_expr, rng)
        batches = [to_device(tokenize_counts(x[i::2]), device) for i in range(2)]
        module = make_module(adata.n_vars, stats, "default", device)
        step_s, mem = time_train_steps(
            module, batches, device, args.precision, args.warmup, args.repeats
        )
        cells_s = batch_size / step_s
        flops = train_flops_per_cell(module.config, n_expr + 1, n_queries(module, n_expr))
        rows.append(
            {
                "expressed_genes": n_expr,
                "cells_per_s": cells_s,
                "tokens_per_s": cells_s * n_expr,
                "peak_mem_mb": mem,
                **achieved(flops, cells_s, peak),
            }
        )
    first = rows[0]
    for r in rows:
        r["time_per_cell_vs_500"] = first["cells_per_s"] / r["cells_per_s"]
        r["mem_vs_500"] = r["peak_mem_mb"] / first["peak_mem_mb"]
    print_table(
        f"Cost vs expressed genes per cell (default model, {adata.n_vars} genes, batch "
        f"{batch_size}; linear = time ratio tracks genes ratio 1/2/4/8)",
        rows,
        ["expressed_genes", "cells_per_s", "tokens_per_s", "time_per_cell_vs_500",
         "peak_mem_mb", "mem_vs_500", "achieved_tflops"],
    )  # fmt: skip
    return rows


def resampled_cells(x: sparse.csr_matrix, n_cells: int, rng, chunk: int = 100_000):
    """``n_cells`` real cells drawn with replacement, counts redrawn as Poisson(count)."""
    parts = []
    for start in range(0, n_cells, chunk):
        rows = x[rng.integers(x.shape[0], size=min(chunk, n_cells - start))]
        rows.data = rng.poisson(rows.data).astype(np.float32)
        rows.eliminate_zeros()
        parts.append(rows)
    # indices and indptr keep one dtype: scipy converts mismatched ones (a full copy)
    # on every row selection, which made per-batch cost grow with the number of cells
    return sparse.vstack(parts, format="csr")


def section_cells(adata, device, args) -> list[dict]:
    """Training cells/s through the data loader as the dataset grows (fixed steps)."""
    rng = np.random.default_rng(0)
    sub = top_genes(adata, 1000)
    sizes = [10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000]
    steps = args.cell_steps
    rows = []
    for n_cells in sizes:
        x = resampled_cells(sub.X.tocsr(), n_cells, rng)
        data = anndata.AnnData(x, var=sub.var)
        scexceiver.ExceiverModel.setup_anndata(data)
        stats = gene_statistics(x, np.arange(min(n_cells, 20_000)))
        module = make_module(sub.n_vars, stats, "default", device)
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
        manager = scexceiver.ExceiverModel._get_most_recent_anndata_manager(data)
        loader = ExceiverDataLoader(
            manager, batch_size=64, shuffle=True, pin_memory=device.type == "cuda"
        )
        times = []
        iterator = iter(loader)
        for i in range(args.warmup + steps):
            sync(device)
            start = time.perf_counter()
            batch = to_device(next(iterator), device)
            with autocast(device, args.precision):
                _, _, loss_output = module(batch)
            loss_output.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        cells_s = 64 / statistics.median(times)
        rows.append(
            {
                "cells": n_cells,
                "nnz_per_cell": x.nnz / n_cells,
                "cells_per_s": cells_s,
                "projected_epoch_s": n_cells / cells_s,
                "steps_timed": steps,
            }
        )
        del data, x, loader, iterator
    for r in rows:
        r["cells_per_s_vs_10k"] = r["cells_per_s"] / rows[0]["cells_per_s"]
    print_table(
        "Cost vs number of cells (default model, top 1,000 genes, batch 64, data loading "
        "included; linear = constant cells/s)",
        rows,
        ["cells", "nnz_per_cell", "cells_per_s", "cells_per_s_vs_10k", "projected_epoch_s"],
    )
    return rows


def section_loader(adata, device, args) -> list[dict]:
    """Seconds per batch of the data loader alone, by worker count."""
    data = adata.copy()
    scexceiver.ExceiverModel.setup_anndata(data)
    manager = scexceiver.ExceiverModel._get_most_recent_anndata_manager(data)
    workers = [0] if device.type == "cpu" else [0, 2, 4, 8]
    rows = []
    for num_workers in workers:
        for bucketing in (False, True):
            loader = ExceiverDataLoader(
                manager,
                batch_size=64,
                shuffle=True,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
                length_bucketing=bucketing,
            )
            times, padding = [], []
            for _ in range(1 if args.quick else 2):
                start = time.perf_counter()
                n = 0
                for batch in loader:
                    padding.append(float(1 - batch["token_mask"].float().mean()))
                    n += 1
                times.append((time.perf_counter() - start) / n)
            rows.append(
                {
                    "num_workers": num_workers,
                    "length_bucketing": bucketing,
                    "ms_per_batch": 1e3 * min(times),
                    "padding_fraction": float(np.mean(padding)),
                }
            )
    print_table(
        "Data loader alone (PBMC 3k, batch 64, shuffled)",
        rows,
        ["num_workers", "length_bucketing", "ms_per_batch", "padding_fraction"],
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default=None)
    parser.add_argument("--sections", nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    parser.add_argument("--out", default=None, help="JSON path (default: results/speed_*)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision is None:
        args.precision = "bf16" if device.type == "cuda" else "fp32"
    args.warmup = 1
    args.repeats = 3
    args.epochs = 2 if args.quick else 3
    args.panel_batch = 32
    args.cell_steps = 10 if args.quick else 20
    sections = args.sections or [
        "kernels",
        "panel",
        "loader",
        "scvi",
        "embed",
        "genes",
        "cells",
        "compile",
    ]
    adata = scexceiver.datasets.pbmc3k()
    name = device_name(device)
    print(f"# scexceiver speed benchmarks on {name}, precision {args.precision}")
    result = {
        "device": name,
        "precision": args.precision,
        "quick": args.quick,
        "torch": torch.__version__,
        "scvi_tools": scvi.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": list(__import__("os").getloadavg()),
    }
    tag = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:40]
    out = (
        Path(args.out)
        if args.out
        else RESULTS / (f"speed_{device.type}{'_quick' if args.quick else ''}_{tag}.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    store: dict = {}
    started = time.perf_counter()
    for section in sections:
        t = time.perf_counter()
        fn = globals()[f"section_{section}"]
        needs_store = section in ("scvi", "embed")
        result[section] = (
            fn(adata, device, args, store) if needs_store else fn(adata, device, args)
        )
        print(f"({section}: {time.perf_counter() - t:.0f} s)")
        # written after every section, so an interrupted run keeps what it measured
        result["total_s"] = time.perf_counter() - started
        out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nWrote {out} ({result['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
