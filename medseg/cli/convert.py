"""``medseg convert INPUT OUTPUT.nii.gz [--series UID]``: DICOM series, NIfTI or NRRD to NIfTI.

The input is validated strictly (see :mod:`medseg.io`); any refusal exits non-zero with one
line and writes nothing. The output is written atomically with the RAS affine as sform and qform.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError
from medseg.io.image import NIFTI_SUFFIXES, image_format, load_image, save_nifti

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``convert`` subcommand.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "convert",
        help="convert a DICOM series, NIfTI or NRRD to NIfTI",
        description="Convert a DICOM folder (or file), NIfTI or NRRD image to NIfTI with the correct "
        "world affine. The DICOM series is sorted along the slice normal and refused when its geometry "
        "is broken (missing slice, uneven spacing, tilt, mixed sizes) or the file is corrupt.",
    )
    parser.add_argument("input", metavar="INPUT", help="DICOM folder or file, .nii/.nii.gz or .nrrd file")
    parser.add_argument("output", metavar="OUTPUT", help="output .nii or .nii.gz file")
    parser.add_argument("--series", metavar="UID", default=None, help="SeriesInstanceUID to convert")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Convert ``args.input`` to ``args.output``; returns the exit code."""
    output = Path(args.output)
    if not output.name.lower().endswith(NIFTI_SUFFIXES):
        raise ConfigError(f"output {output} must end in .nii or .nii.gz")
    if not output.parent.is_dir():
        raise ConfigError(f"output folder {output.parent} does not exist; create it first")
    if args.series is not None and image_format(args.input) != "dicom":
        raise ConfigError("--series applies to DICOM input only")
    image = load_image(args.input, series_uid=args.series, dtype=None)  # keep the stored voxel type
    save_nifti(image, output)
    shape = "x".join(str(s) for s in image.shape)
    spacing = "x".join(f"{float(s):.4g}" for s in image.pixdim)
    uid = f" (series {image.meta['series_uid']})" if "series_uid" in image.meta else ""
    dtype = str(image.dtype).replace("torch.", "")
    print(f"wrote {output}: {shape} voxels of {spacing} mm, {dtype}{uid}")
    return 0
