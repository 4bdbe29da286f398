"""``medseg segment INPUT --bundle BUNDLE --output OUTDIR``: segment images with a MONAI bundle.

Writes ``segmentation.nii.gz`` (on the input's grid), ``segmentation.dcm`` (DICOM SEG) and
``rtstruct.dcm`` (RT structure set) for DICOM input, ``overlay.png`` and ``report.json``; a folder
of several series or image files is a batch with one result folder per input. Research use only,
not for diagnosis.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medseg.precision import add_precision_argument

__all__ = ["add_parser", "run", "format_volumes", "quiet_libraries"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``segment`` subcommand.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "segment",
        help="segment a DICOM series, NIfTI or NRRD image (or a folder of them) with a bundle",
        description="Segment INPUT with a MONAI bundle (its configs/inference.json and models/model.pt). "
        "INPUT is a DICOM folder holding one series, a NIfTI or NRRD file (outputs go straight into OUTDIR), "
        "or a folder of several series/files (a batch: one folder per input in OUTDIR). The input is "
        "checked against the bundle (modality, channels, spacing, extent) first. Research use only, "
        "not for diagnosis.",
    )
    parser.add_argument(
        "input",
        metavar="INPUT",
        nargs="+",
        help="DICOM folder or file, .nii/.nii.gz or .nrrd, a folder of them, or a DICOMweb study query "
        "(http://PACS/dicom-web/studies/UID or ...?PatientID=P); several are a batch",
    )
    parser.add_argument(
        "--bundle", required=True, metavar="BUNDLE", help="bundle folder, e.g. bundles/hippocampus_unet3d"
    )
    parser.add_argument(
        "--output", "-o", required=True, metavar="OUTDIR", help="output folder (created when missing)"
    )
    parser.add_argument(
        "--series", metavar="UID", default=None, help="SeriesInstanceUID to segment from a DICOM folder"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--tta", action="store_true", help="average over flips (test-time augmentation)")
    parser.add_argument(
        "--fast", action="store_true", help="an ensemble bundle runs its first member only"
    )
    parser.add_argument(
        "--overlap", type=float, default=None, metavar="F", help="sliding-window overlap in [0, 1)"
    )
    parser.add_argument(
        "--force", action="store_true", help="segment even when the input does not fit the bundle"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for batches")
    parser.add_argument(
        "--no-rtstruct", action="store_true", help="no RT structure set (rtstruct.dcm) for DICOM input"
    )
    _add_batch_arguments(parser)
    add_precision_argument(parser)
    parser.set_defaults(func=run)
    return parser


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """Keep library chatter that says nothing to a user off the console (unless ``--verbose``)."""
    if verbose:
        yield
        return
    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every module it copies into the SEG
    with warnings.catch_warnings():
        # MONAI's deprecation notices about the bundle's transforms are for bundle authors, not users
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        # e.g. "nvImageCodec decoder plugin did not register", repeated for every LoadImage built
        warnings.filterwarnings("ignore", category=UserWarning, module=r"monai\.")
        yield


def format_volumes(report: dict[str, Any]) -> str:
    """``name 1.23 mL, name 0.98 mL`` from a report."""
    return ", ".join(f"{row['name']} {row['volume_ml']:.2f} mL" for row in report["labels"])


def _add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a batch (medseg.segment.batch): Ray workers, resume."""
    batch = parser.add_argument_group("batch (several inputs)")
    batch.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="run the batch on N Ray workers, each loading the model once (default: in this process)",
    )
    batch.add_argument(
        "--ray-address", default=None, metavar="ADDR",
        help="an existing Ray cluster (from 'ray start --head'); default: a local Ray started here",
    )
    batch.add_argument(
        "--low-memory",
        action="store_true",
        help="for very large series: the sliding window slab by slab, only labels kept (same result)",
    )
    batch.add_argument(
        "--resume", action="store_true",
        help="skip inputs that OUTDIR/manifest.jsonl records as done with the same weights",
    )


def _batch_settings(args: argparse.Namespace) -> Any:
    from medseg.segment import BatchSettings

    gpus = 1.0 if str(args.device).startswith("cuda") else 0.0  # Ray gives each worker its own GPU
    return BatchSettings(
        workers=args.workers, ray_address=args.ray_address, resume=args.resume, gpus_per_worker=gpus
    )


def _segment(args: argparse.Namespace, output: Path) -> Any:
    from medseg.cli.main import flag_of
    from medseg.segment import segment

    with quiet_libraries(getattr(args, "verbose", False)):
        return segment(
            args.input[0] if len(args.input) == 1 else args.input,
            args.bundle,
            output,
            series_uid=args.series,
            device=args.device,
            tta=args.tta,
            fast=args.fast,
            overlap=args.overlap,
            force=args.force,
            progress=not args.no_progress,
            rtstruct=not args.no_rtstruct,
            batch=_batch_settings(args),
            low_memory=args.low_memory,
            flag_of=flag_of,
            precision=args.precision,
        )


def _segment_photo(args: argparse.Namespace, output: Path) -> int:
    """One PNG/JPEG photograph: a PNG label map on its own size, the overlay and the report."""
    from medseg.segment.photo import segment_photo

    with quiet_libraries(getattr(args, "verbose", False)):
        result = segment_photo(args.input[0], args.bundle, output, device=args.device)
    areas = ", ".join(f"{e['name']} {e['fraction']:.1%}" for e in result.report["labels"])
    print(f"{areas} of the photograph -> {result.output_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Segment ``args.input``; returns 0, or the number of failed inputs of a batch (capped at 100)."""
    from medseg.errors import ConfigError
    from medseg.io import prefetch
    from medseg.segment import exit_code

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} exists and is not a folder")
    from medseg.io.formats import is_photo_file

    if len(args.input) == 1 and is_photo_file(args.input[0]):
        return _segment_photo(args, output)
    # read the input on the other core while torch and MONAI are imported (a batch folder
    # fails to read as one image: then the prefetch is simply not used)
    from medseg.segment.dicomweb import is_dicomweb_url

    if len(args.input) == 1 and not is_dicomweb_url(args.input[0]):
        prefetch.start(args.input[0], args.series)
    try:
        result = _segment(args, output)
    finally:
        prefetch.cancel()
    for name, res in result.results.items():
        where = res.output_dir
        uid = res.report["input"].get("series_uid")
        label = f"{name}: " if name else ""
        print(
            f"{label}{format_volumes(res.report)} -> {where}" + (f" (series {uid})" if uid and name else "")
        )
        if res.report["suitability"]["forced"]:
            print(
                f"{label}warning: the input does not fit the bundle; segmented because of --force",
                file=sys.stderr,
            )
    if result.single:
        return 0
    total = len(result.results) + len(result.failures) + len(result.skipped)
    notes = [f"{len(result.skipped)} done before, skipped"] if result.skipped else []
    notes += [f"{result.retried} retried after a worker died"] if result.retried else []
    print(
        f"segmented {len(result.results)} of {total} inputs into {output}"
        + (f" ({'; '.join(notes)})" if notes else "")
        + f"; manifest {result.manifest}"
    )
    if result.failures:
        print(f"{len(result.failures)} input(s) failed:", file=sys.stderr)
        for name, message in result.failures.items():
            print(f"  {name}: {message}", file=sys.stderr)
    return exit_code(result)
