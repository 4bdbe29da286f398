"""Entry point of the ``medseg`` console script.

Each subcommand lives in its own module under :mod:`medseg.cli` and exposes
``add_parser(subparsers)`` which registers the subcommand and sets ``func``.
Errors derived from :class:`medseg.errors.MedsegError` are printed as one line; an error about a
Python parameter (``exc.param``) names the command-line flag that sets it (:func:`flag_of`), also
in messages collected while the command runs (:func:`medseg.errors.flag_names`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medseg import __version__
from medseg.errors import MedsegError, flag_names

__all__ = ["PARAM_FLAGS", "build_parser", "configure_logging", "error_message", "flag_of", "main"]

# Library parameters whose flag is not ``--`` + the name with dashes.
PARAM_FLAGS = {"series_uid": "--series", "data_dir": "--data"}

# Modules registering subcommands, in the order `medseg --help` lists them.
SUBCOMMAND_MODULES = [
    "medseg.cli.series",
    "medseg.cli.convert",
    "medseg.cli.plan",
    "medseg.cli.train",
    "medseg.cli.evaluate",
    "medseg.cli.bundle",
    "medseg.cli.ensemble",
    "medseg.cli.segment",
    "medseg.cli.demo",
    "medseg.cli.serve",
    "medseg.cli.node",
    "medseg.cli.users",
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


def flag_of(param: str) -> str:
    """The command-line flag that sets the library parameter ``param`` (``sw_batch_size`` -> ``--sw-batch-size``)."""
    return PARAM_FLAGS.get(param, "--" + param.replace("_", "-"))


def error_message(exc: MedsegError) -> str:
    """The one-line message the CLI prints for ``exc``: its parameter named as the flag."""
    return exc.with_flag(flag_of(exc.param)) if exc.param else str(exc)


# MONAI warns on every import that the GPU DICOM decoder is missing; medseg decodes DICOM with
# pydicom, so for users this is noise: it is logged at debug level (seen with --verbose).
_DEBUG_ONLY_LOGGERS = ("monai.data.nvimgcodec_pydicom_plugin",)


def _as_debug(record: logging.LogRecord) -> bool:
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def configure_logging(verbose: bool) -> None:
    """medseg's log format and level; MONAI's notices that concern no medseg user go to debug level."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for name in _DEBUG_ONLY_LOGGERS:
        logger = logging.getLogger(name)
        if _as_debug not in logger.filters:
            logger.addFilter(_as_debug)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with flag_names(flag_of):  # messages collected as text (batch failures) name flags too
            return int(args.func(args) or 0)
    except MedsegError as exc:
        print(f"medseg {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"medseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
