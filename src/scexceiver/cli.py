"""Command-line interface: ``scexceiver pretrain``, ``scexceiver embed``, ``scexceiver demo``.

Exit codes: 0 success, 1 failure while running, 2 bad usage (wrong paths, keys or
options; reported before any training starts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._h5ad import SOURCE_FILE_KEY, InputError


def _devices(value: str) -> int | list[int] | str:
    """``auto``, a number of devices, or a comma-separated list of device indices."""
    if value == "auto":
        return value
    try:
        if "," in value:
            return [int(v) for v in value.split(",")]
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: use 'auto', a number of devices, or indices such as 0,1"
        ) from None


def _check_output_folder(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {str(out)!r} is not empty; pass --overwrite to replace it.")


def _pretrain(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_output_folder(out, args.overwrite)
    from ._h5ad import open_counts_on_disk, read_counts

    if args.on_disk is None:
        adata = read_counts(args.data, layer=args.layer, gene_key=args.gene_key)
        joined = " (genes shared by all files)"
    else:
        adata = open_counts_on_disk(
            args.data, args.on_disk, layer=args.layer, gene_key=args.gene_key
        )
        joined = f" (all files' genes, on disk in {args.on_disk})"
    if args.batch_key is not None and args.batch_key not in adata.obs.columns:
        raise InputError(
            f"--batch-key {args.batch_key!r} is not an obs column of every file "
            f"(shared columns: {list(adata.obs.columns)})."
        )
    print(
        f"read {adata.n_obs:,} cells x {adata.n_vars:,} genes from {len(args.data)} file(s)"
        + (joined if len(args.data) > 1 or args.on_disk else "")
    )

    import scvi

    from .model import ExceiverModel

    scvi.settings.seed = args.seed
    ExceiverModel.setup_anndata(
        adata,
        batch_key=args.batch_key,
        gene_key=args.gene_key,
        gene_panel_key=None if args.on_disk is None else SOURCE_FILE_KEY,
    )
    try:
        model = ExceiverModel(adata, preset=args.preset)
    except ValueError as err:
        raise InputError(str(err)) from err
    print(model._model_summary_string)
    model.train(
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        accelerator=args.accelerator,
        devices=args.devices,
        precision=args.precision,
        early_stopping=args.early_stopping,
        check_val_every_n_epoch=1,
        datasplitter_kwargs={"num_workers": args.num_workers},
    )
    model.save(str(out), overwrite=True)
    history = model.history
    epochs = len(history["train_loss"])
    summary = f"trained {epochs} epoch(s); train loss {history['train_loss'].iloc[-1, 0]:.4f}"
    if "validation_loss" in history:
        summary += f", validation loss {history['validation_loss'].iloc[-1, 0]:.4f}"
    print(f"{summary}; model saved to {out}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from ._embed import embed, load_model
    from ._h5ad import check_h5ad_path, read_h5ad
    from ._write import store

    data_path, out = check_h5ad_path(args.data), Path(args.out)
    if out.suffix != ".h5ad":
        raise InputError(f"--out {str(out)!r} must end in .h5ad.")
    if out.exists() and out.resolve() == data_path.resolve():
        raise InputError("--out is the input file; embed never overwrites its input.")
    if out.exists() and not args.overwrite:
        raise InputError(f"--out {str(out)!r} exists; pass --overwrite to replace it.")
    model = load_model(args.model_dir)
    setup_args = model.registry_["setup_args"]
    layer = setup_args.get("layer") if args.layer is None else args.layer
    gene_key = setup_args.get("gene_key") if args.gene_key is None else args.gene_key
    adata = read_h5ad(data_path)
    for attr, key in (("obsm", args.obsm_key), ("varm", args.varm_key)):
        if key in getattr(adata, attr) and not args.overwrite:
            raise InputError(
                f"the data already has {attr}[{key!r}]; pass --overwrite or another --{attr}-key."
            )
    result = embed(model, adata, layer=layer, gene_key=gene_key, batch_size=args.batch_size)
    store(adata, "obsm", args.obsm_key, result.cells, overwrite=args.overwrite)
    store(adata, "varm", args.varm_key, result.genes, overwrite=args.overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out, compression="gzip")
    print(
        f"{result.overlap}; wrote "
        f"obsm[{args.obsm_key!r}] {result.cells.shape} and varm[{args.varm_key!r}] "
        f"{result.genes.shape} to {out}"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import format_report, run_demo

    report = run_demo(args.out, max_epochs=args.max_epochs, seed=args.seed)
    print(format_report(report))
    print(f"results written to {args.out}")
    return 0


def _add_pretrain(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a model on h5ad files of raw counts",
        description="Pretrain Exceiver by masked expression prediction on one or more h5ad "
        "files of raw counts and save the model into --out. Several files are concatenated "
        f"in memory on the genes they all share; obs[{SOURCE_FILE_KEY!r}] names each "
        f"cell's file (pass --batch-key {SOURCE_FILE_KEY} to condition on it). With "
        "--on-disk they are written as one h5ad corpus on the union of their genes and "
        "training streams from it in shuffled chunks, never loading the counts.",
    )
    p.add_argument("data", nargs="+", metavar="DATA.h5ad", help="h5ad file(s) with raw counts")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the saved model")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--layer", help="layer with raw counts in every file (default: X)")
    p.add_argument(
        "--on-disk",
        metavar="CORPUS.h5ad",
        help="train from disk: write the files' counts as one h5ad corpus here (a copy, "
        "reused if it exists) and stream minibatches from it; genes a file did not "
        "measure are never its cells' targets",
    )
    p.add_argument("--batch-key", help="obs column of batch labels to condition on")
    p.add_argument(
        "--gene-key", help="var column of stable gene IDs, e.g. Ensembl (default: var_names)"
    )
    p.add_argument(
        "--preset",
        choices=("default", "paper", "integration"),
        default="default",
        help="model configuration (default: default; paper reproduces the 2022 release; "
        "integration mixes batches of the same cell populations more)",
    )
    p.add_argument(
        "--max-epochs", type=int, help="maximum epochs (default: chosen from the data size)"
    )
    p.add_argument("--batch-size", type=int, help="cells per minibatch (default: preset's, 64)")
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="stop when the validation loss stops improving (default: train all epochs)",
    )
    p.add_argument(
        "--accelerator", default="auto", help="cpu, gpu or auto (default: a GPU when present)"
    )
    p.add_argument(
        "--devices", type=_devices, default="auto", help="auto, a number, or indices like 0,1"
    )
    p.add_argument(
        "--precision", help="Lightning precision (default: bf16-mixed on GPU, 32-true on CPU)"
    )
    p.add_argument("--num-workers", type=int, default=0, help="data loader workers (0)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.set_defaults(func=_pretrain)


def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="write cell and gene embeddings of an h5ad file with a saved model",
        description="Embed the cells of DATA.h5ad with the model in MODEL_DIR and write a "
        "copy of the data with the cell embeddings in obsm and the gene embeddings in varm "
        "to --out (the input file is never modified). Genes are matched to the model's by "
        "key; genes the model does not know get NaN gene embeddings.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="folder of a saved model")
    p.add_argument("data", metavar="DATA.h5ad", help="h5ad file with raw counts")
    p.add_argument("--out", required=True, metavar="OUT.h5ad", help="output h5ad file")
    p.add_argument(
        "--layer", help="layer with raw counts (default: the layer the model was trained on)"
    )
    p.add_argument(
        "--gene-key", help="var column with the model's gene keys (default: the model's)"
    )
    p.add_argument("--obsm-key", default="X_exceiver", help="obsm key (X_exceiver)")
    p.add_argument(
        "--varm-key", default="exceiver_gene_embedding", help="varm key (exceiver_gene_embedding)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --out file and keys"
    )
    p.add_argument("--batch-size", type=int, help="cells per minibatch of inference")
    p.set_defaults(func=_embed)


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train on the bundled PBMC 3k and write embeddings, plots and a report",
        description="Train the default model on the bundled 10x PBMC 3k counts and write "
        "the AnnData with obsm/varm filled, UMAP and training-curve pictures, a report "
        "and the model into --out.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-epochs", type=int, default=20, help="training epochs (20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``scexceiver`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="scexceiver",
        description="Exceiver, a single-cell gene expression language model.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_pretrain(sub)
    _add_embed(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 bad usage).

    Parameters
    ----------
    argv
        Arguments without the program name; ``None`` reads ``sys.argv``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"scexceiver {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a command line reports failures, it does not raise them
        print(f"scexceiver {args.command}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
