"""``medseg series DIR [--json]``: list every DICOM series under a folder, with its problems.

Problems (missing slices, uneven spacing, tilt, duplicates, corrupt files ...) are reported, not
fatal: the command exits 0 unless the folder does not exist or holds no DICOM file.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from medseg.io.dicom import SeriesInfo, scan_folder

__all__ = ["add_parser", "run", "series_to_json"]

# The keys of each series in --json output, in order.
JSON_KEYS = (
    "uid",
    "modality",
    "description",
    "slices",
    "size",
    "spacing",
    "orientation",
    "image",
    "problems",
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``series`` subcommand.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "series",
        help="list the DICOM series under a folder",
        description="List every DICOM series under DIR (recursively): UID, modality, description, slices, "
        "size, spacing, orientation, whether it is an image series, and the problems found.",
    )
    parser.add_argument("folder", metavar="DIR", help="folder to search (recursively)")
    parser.add_argument("--json", action="store_true", help='print {"series": [...]} as JSON')
    parser.set_defaults(func=run)
    return parser


def series_to_json(info: SeriesInfo) -> dict[str, Any]:
    """The JSON object of one series (exactly :data:`JSON_KEYS`)."""
    return {key: getattr(info, key) for key in JSON_KEYS}


def _fmt_size(info: SeriesInfo) -> str:
    return "x".join(str(v) for v in info.size) if info.size else "-"


def _fmt_spacing(info: SeriesInfo) -> str:
    if not info.spacing:
        return "-"
    return "x".join("?" if v is None else f"{v:.4g}" for v in info.spacing)


def run(args: argparse.Namespace) -> int:
    """Scan ``args.folder`` and print the series table (or JSON); returns the exit code."""
    scan = scan_folder(args.folder)
    infos = scan.infos
    for bad in scan.unreadable:  # no series to attach them to: report beside the listing
        print(f"warning: {bad.path} is not a readable DICOM file ({bad.reason})", file=sys.stderr)
    if args.json:
        print(json.dumps({"series": [series_to_json(i) for i in infos]}, indent=2))
        return 0
    header = ("SERIES UID", "MODALITY", "DESCRIPTION", "SLICES", "SIZE", "SPACING (mm)", "ORIENT", "IMAGE")
    rows = [
        (
            i.uid,
            i.modality or "-",
            i.description or "-",
            str(i.slices),
            _fmt_size(i),
            _fmt_spacing(i),
            i.orientation or "-",
            "yes" if i.image else "no",
        )
        for i in infos
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
    for info, row in zip(infos, rows, strict=True):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        for problem in info.problems:
            print(f"    problem: {problem}")
    n_problems = sum(len(i.problems) for i in infos)
    print(f"{len(infos)} series, {sum(i.image for i in infos)} image series, {n_problems} problem(s)")
    return 0
