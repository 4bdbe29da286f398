"""What ``medseg segment INPUT`` segments: one input, or a batch of DICOM series and image files.

* a NIfTI/NRRD/DICOM file, a folder holding exactly one DICOM image series (and no image files),
  or any folder with ``--series UID``: a single input, outputs straight into OUTDIR;
* any other folder: a batch of every DICOM image series and every NIfTI/NRRD file under it
  (recursively), each into ``OUTDIR/<name>/``. The names are the ids of :func:`medseg.io.formats.discover`
  (the same as ``medseg serve`` gives its datastore images): a series' folder relative to INPUT, a
  file's relative path without the extension. Non-image DICOM objects (SEG, SR, presentation
  states) are skipped; unreadable DICOM files are reported as failures. A failure of one input
  does not stop the others.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import InputError, MedsegError

__all__ = ["InputItem", "BatchResult", "discover_inputs", "run_inputs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputItem:
    """One input to segment.

    Attributes:
        name: result folder name in a batch ("" for a single input: outputs go straight to OUTDIR).
        path: file or folder to load.
        series_uid: the series to load from ``path`` (DICOM folders).
        error: set for an input already known to be unusable (e.g. an unreadable DICOM file).
    """

    name: str
    path: Path
    series_uid: str | None = None
    error: str | None = None


@dataclass
class BatchResult:
    """Outcome of a run over one or more inputs.

    Attributes:
        results: name -> :class:`medseg.segment.pipeline.SegmentResult` of each success.
        failures: name -> one-line error of each failure.
        single: True when INPUT was a single input (no per-input folders).
    """

    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    single: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures


def discover_inputs(
    path: str | os.PathLike, series_uid: str | None = None, exclude: str | os.PathLike | None = None
) -> tuple[list[InputItem], bool]:
    """The inputs under ``path`` and whether it is a single input (True) or a batch (False).

    Args:
        path: file or folder.
        series_uid: the one DICOM series to take from a folder.
        exclude: a folder whose image files are no input (the output folder, when inside ``path``).

    Raises:
        InputError (and subclasses): the path does not exist, or holds nothing to segment.
    """
    from medseg.io.formats import discover, image_format

    root = Path(path)
    if not root.exists():
        raise InputError(f"{root} does not exist; give a DICOM folder, a NIfTI or an NRRD file")
    if root.is_file() or series_uid is not None:
        if series_uid is not None and image_format(root) != "dicom":
            raise InputError(
                f"series_uid applies to DICOM input only, but {root} is not DICOM", param="series_uid"
            )
        return [InputItem("", root, series_uid)], True

    found = discover(root, exclude=exclude)
    series, files = found.series, found.files
    if found.scan_error is not None and not files:
        raise found.scan_error
    if len(series) == 1 and not files:
        return [InputItem("", root, None)], True  # errors (corrupt files, geometry) surface on loading
    if not series and not files:
        # only non-image DICOM, or nothing readable: let the loader say exactly what is wrong
        return [InputItem("", root, None)], True
    return [InputItem(i.id, i.path, i.series_uid, i.error) for i in found.images], False


def run_inputs(
    items: list[InputItem],
    single: bool,
    output_dir: str | os.PathLike,
    segment: Callable[[InputItem, Path], Any],
    progress: bool = True,
) -> BatchResult:
    """Segment every input with ``segment(item, outdir)``; a single input's error is raised as is.

    In a batch, a :class:`MedsegError` (or any other exception) of one input is recorded in
    ``failures`` and the next input is processed.
    """
    out = Path(output_dir)
    result = BatchResult(single=single)
    if single:
        item = items[0]
        result.results[item.name] = segment(item, out)
        return result
    from tqdm import tqdm

    bar = tqdm(items, desc="segment", unit="input", file=sys.stderr, disable=not progress, dynamic_ncols=True)
    for item in bar:
        bar.set_postfix_str(item.name[-40:])
        if item.error:
            result.failures[item.name] = item.error
            continue
        try:
            result.results[item.name] = segment(item, out / item.name)
        except MedsegError as exc:
            result.failures[item.name] = str(exc)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a bug or an unexpected library error: recorded, the batch goes on
            logger.debug("input %s failed:\n%s", item.name, traceback.format_exc())
            result.failures[item.name] = f"{type(exc).__name__}: {exc}"
    bar.close()
    return result
