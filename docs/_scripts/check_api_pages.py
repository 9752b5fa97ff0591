"""Check that the built HTML has a page for every public object of scexceiver.

Public objects are the names in ``__all__`` of the package and its public subpackages,
plus the command-line entry points. Usage: ``python docs/_scripts/check_api_pages.py
docs/_build/html``; exits 1 and lists what is missing.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

PUBLIC_MODULES = ["scexceiver", "datasets", "pretrained", "tl", "pl", "module", "data", "train"]
EXTRA = ["scexceiver.cli.main", "scexceiver.cli.build_parser"]


def public_objects() -> list[str]:
    """Full names of every public object (modules themselves excluded)."""
    names = []
    for short in PUBLIC_MODULES:
        name = short if short == "scexceiver" else f"scexceiver.{short}"
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None) or [
            attr
            for attr, obj in vars(module).items()
            if not attr.startswith("_") and getattr(obj, "__module__", None) == name
        ]
        for attr in exported:
            obj = getattr(module, attr)
            if type(obj).__name__ == "module":
                continue
            if name == "scexceiver":
                names.append(f"scexceiver.{attr}")
            else:
                names.append(f"{name}.{attr}")
    return sorted(set(names) | set(EXTRA))


def missing_pages(html: Path) -> list[str]:
    """Public objects without ``generated/<name>.html`` in ``html``."""
    return [n for n in public_objects() if not (html / "generated" / f"{n}.html").is_file()]


if __name__ == "__main__":
    html = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
    missing = missing_pages(html)
    print(
        f"{len(public_objects()) - len(missing)} of {len(public_objects())} public objects "
        f"have a page in {html}/generated"
    )
    if missing:
        print("missing:", *missing, sep="\n  ")
        sys.exit(1)
