"""Command-line interface: ``scexceiver demo``."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from ._demo import format_report, run_demo

    report = run_demo(args.out, max_epochs=args.max_epochs, seed=args.seed)
    print(format_report(report))
    print(f"results written to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``scexceiver`` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(
        prog="scexceiver",
        description="Exceiver, a single-cell gene expression language model.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train on the bundled PBMC 3k and write embeddings, plots and a report",
        description="Train the default model on the bundled 10x PBMC 3k counts and write "
        "the AnnData with obsm/varm filled, UMAP and training-curve pictures, a report "
        "and the model into --out.",
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--max-epochs", type=int, default=20, help="training epochs (20)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (0)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"scexceiver: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
