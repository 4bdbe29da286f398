"""``medseg demo``: segment the hippocampus DICOM crops with the shipped hippocampus bundle.

The bundle is ``bundles/hippocampus_unet3d`` next to the ``medseg`` package (a source checkout) or
under the working directory. The images are the hippocampus DICOM crop series of the project's
data folder (``$MEDSEG_DATA_DIR`` or ``../shared/data``); when that folder is absent, three MSD
Task04 validation images are downloaded by MONAI's ``DecathlonDataset`` into a cache folder.
Prints each input's label volumes and where the outputs are. Research use only, not for diagnosis.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run", "find_bundle", "find_demo_inputs"]

BUNDLE_NAME = "hippocampus_unet3d"
DICOM_SUBFOLDER = Path("dicom") / "hippocampus-crops"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "demo",
        help="segment the hippocampus demo series with the shipped bundle",
        description="Segment the hippocampus DICOM crop series of the project data ($MEDSEG_DATA_DIR or "
        "../shared/data; else MSD Task04 images downloaded with MONAI's DecathlonDataset) with "
        f"bundles/{BUNDLE_NAME}, and print the label volumes. Research use only, not for diagnosis.",
    )
    parser.add_argument(
        "--output", "-o", default="out/demo", metavar="OUTDIR", help="output folder (default out/demo)"
    )
    parser.add_argument(
        "--bundle", default=None, metavar="BUNDLE", help=f"bundle folder (default: the shipped {BUNDLE_NAME})"
    )
    parser.add_argument(
        "--cache-dir", default=None, metavar="DIR", help="download folder for the MSD fallback"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.set_defaults(func=run)
    return parser


def find_bundle() -> Path:
    """The shipped hippocampus bundle, looked up by name as :mod:`medseg.paths` says.

    Raises:
        BundleError: not found; the message says where it was looked for and what to do.
    """
    from medseg.errors import BundleError
    from medseg.paths import BUNDLES_ENV, bundle_search_dirs, resolve_bundle_path

    found = resolve_bundle_path(BUNDLE_NAME)
    if found is not None and (found / "configs" / "metadata.json").is_file():
        return found
    searched = ", ".join(str(d) for d in bundle_search_dirs()) or "no bundles folder"
    raise BundleError(
        f"the demo bundle {BUNDLE_NAME} was not found (looked in: {searched}); pass --bundle PATH to "
        f"its folder, set {BUNDLES_ENV} to the folder that holds it, or run from a medseg checkout"
    )


def _data_dir() -> Path | None:
    """The project data folder when it holds the demo series, else None."""
    from medseg.paths import find_data_dir

    found = find_data_dir()
    return found if found is not None and (found / DICOM_SUBFOLDER).is_dir() else None


def _where_data_is_expected() -> str:
    """Where the demo looked for the project data, and how to point it there."""
    from medseg.paths import DATA_ENV, find_data_dir

    found = find_data_dir()
    if os.environ.get(DATA_ENV):
        where = f"{DICOM_SUBFOLDER} is missing from {DATA_ENV}={os.environ[DATA_ENV]}"
    elif found is not None:
        where = f"{DICOM_SUBFOLDER} is missing from the data folder {found}"
    else:
        where = (
            "the data folder is missing: no shared/data beside the medseg source checkout "
            f"or beside {Path.cwd()} or one of its parents"
        )
    return f"{where}; set {DATA_ENV} to the data folder that holds {DICOM_SUBFOLDER}"


def find_demo_inputs(cache_dir: str | os.PathLike | None = None, download: bool = True) -> tuple[Path, str]:
    """The folder to segment and a description of where it comes from.

    The hippocampus DICOM crops of the project data when present; else (with ``download``) a folder
    of links to three MSD Task04 validation images fetched by ``monai.apps.DecathlonDataset``.

    Raises:
        InputError: no data and ``download`` is False, or the download failed.
    """
    from medseg.errors import InputError

    data = _data_dir()
    if data is not None:
        return data / DICOM_SUBFOLDER, "hippocampus DICOM crop series of the project data"
    if not download:
        raise InputError(
            f"the project data was not found ({_where_data_is_expected()}; see the README), "
            "or allow the MSD download"
        )
    from monai.apps import DecathlonDataset

    cache = (
        Path(cache_dir)
        if cache_dir
        else Path(os.environ.get("MEDSEG_CACHE_DIR", Path.home() / ".cache" / "medseg"))
    )
    cache.mkdir(parents=True, exist_ok=True)
    print(
        f"medseg demo: the project data was not found ({_where_data_is_expected()}); "
        f"downloading three MSD Task04 images into {cache} instead",
        flush=True,
    )
    try:
        dataset = DecathlonDataset(
            root_dir=str(cache),
            task="Task04_Hippocampus",
            section="validation",
            download=True,
            cache_rate=0.0,
            transform=None,
        )
    except Exception as exc:  # network or archive problems
        raise InputError(
            f"cannot download MSD Task04 into {cache} ({exc}); the project data was not found either "
            f"({_where_data_is_expected()})"
        ) from exc
    folder = cache / "demo-inputs"
    folder.mkdir(exist_ok=True)
    for item in dataset.data[:3]:
        source = Path(item["image"])
        link = folder / source.name
        if not link.exists():
            link.symlink_to(source)
    return folder, f"MSD Task04 validation images downloaded into {cache}"


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns 0, or 1 when an input failed."""
    from medseg.cli.segment import format_volumes, quiet_libraries
    from medseg.segment import segment

    bundle = Path(args.bundle) if args.bundle else find_bundle()
    inputs, origin = find_demo_inputs(args.cache_dir)
    output = Path(args.output)
    print(f"medseg demo: segmenting the {origin} ({inputs}) with {bundle}")
    print("research use only, not for diagnosis")
    with quiet_libraries(getattr(args, "verbose", False)):
        result = segment(inputs, bundle, output, device=args.device, progress=True)
    for name, res in result.results.items():
        print(
            f"  {name or inputs.name}: {format_volumes(res.report)}  (total {res.report['total_volume_ml']:.2f} mL)"
        )
    for name, message in result.failures.items():
        print(f"  {name}: FAILED: {message}")
    print(f"outputs (segmentation.nii.gz, segmentation.dcm, overlay.png, report.json) in {output.resolve()}")
    return 1 if result.failures else 0
