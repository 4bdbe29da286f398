"""Entry point of the ``medseg`` console script.

Each subcommand lives in its own module under :mod:`medseg.cli` and exposes
``add_parser(subparsers)`` which registers the subcommand and sets ``func``.
Errors derived from :class:`medseg.errors.MedsegError` are printed as one line.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medseg import __version__
from medseg.errors import MedsegError

# Modules registering subcommands, in the order `medseg --help` lists them.
SUBCOMMAND_MODULES = [
    "medseg.cli.series",
    "medseg.cli.convert",
    "medseg.cli.plan",
    "medseg.cli.train",
    "medseg.cli.evaluate",
    "medseg.cli.bundle",
    "medseg.cli.segment",
    "medseg.cli.demo",
    "medseg.cli.serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medseg",
        description="Deep-learning segmentation of medical images (research use only, not for diagnosis).",
    )
    parser.add_argument("--version", action="version", version=f"medseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # subcommand not present in this build
                continue
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedsegError as exc:
        print(f"medseg {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
