"""The `ltd` command line: argparse only. One module per command registers its parser; the work is in
the core modules they call."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ltd_sim.errors import LTDError

# every module defines add_parser(subparsers), which sets `func` on its parser
SUBCOMMANDS = [
    "realrun.cli.generate",  # generate
    "realrun.cli.models",  # models
    "realrun.cli.draft",  # draft build
    "realrun.cli.profile",  # profile
    "realrun.cli.trace",  # trace
    "realrun.cli.sim",  # sim eval, sim serve
    "realrun.cli.pretrain",  # pretrain
    "realrun.cli.bench",  # bench
    "realrun.cli.finetune",  # finetune
    "realrun.cli.tune",  # tune grid, tune ppo
    "realrun.cli.pipeline",  # pipeline
    "realrun.cli.port",  # port
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ltd", description="Learning to Draft: adaptive speculative decoding")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Weights are never fetched at run time (every load passes local_files_only as well); set before any
    # command imports transformers.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LTDError as exc:
        print(f"ltd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ltd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
