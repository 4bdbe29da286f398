"""What ``medseg segment INPUT`` segments: one input, or a batch of DICOM series and image files.

* a NIfTI/NRRD/DICOM file, a folder holding exactly one DICOM image series (and no image files),
  or any folder with ``--series UID``: a single input, outputs straight into OUTDIR;
* any other folder: a batch of every DICOM image series and every NIfTI/NRRD file under it
  (recursively), each into ``OUTDIR/<name>/``. The names are the ids of :func:`medseg.io.formats.discover`
  (the same as ``medseg serve`` gives its datastore images): a series' folder relative to INPUT, a
  file's relative path without the extension. Non-image DICOM objects (SEG, SR, presentation
  states) are skipped; unreadable DICOM files are reported as failures. A failure of one input
  does not stop the others;
* several INPUT paths: always a batch, each path's inputs named under the path's own name
  (``scan.nii.gz`` -> ``scan``, a folder of one series -> its folder name, a folder of several ->
  ``<folder>/<id>``). A path that does not exist is a failed input, not the end of the batch.

:mod:`medseg.segment.batch` runs a batch (in this process, or on Ray).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, InputError, MedsegError

__all__ = ["InputItem", "BatchResult", "discover_inputs"]


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
        skipped: names a resumed batch skipped (done before with the same weights).
        retried: how many times an input went to another worker because its worker died.
        manifest: the batch's ``manifest.jsonl`` (None for a single input).
    """

    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    single: bool = False
    skipped: list[str] = field(default_factory=list)
    retried: int = 0
    manifest: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


def discover_inputs(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    series_uid: str | None = None,
    exclude: str | os.PathLike | None = None,
) -> tuple[list[InputItem], bool]:
    """The inputs under ``path`` and whether it is a single input (True) or a batch (False).

    Args:
        path: file or folder, or several of them (a batch; see the module docstring for the names).
        series_uid: the one DICOM series to take from a folder (one path only).
        exclude: a folder whose image files are no input (the output folder, when inside ``path``).

    Raises:
        InputError (and subclasses): the path does not exist, or holds nothing to segment;
        ConfigError: ``series_uid`` with several paths.
    """
    from medseg.io.formats import discover, image_format

    if not isinstance(path, (str, os.PathLike)):
        paths = list(path)
        if len(paths) != 1:
            return _discover_several(paths, series_uid, exclude), False
        path = paths[0]
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


def _discover_several(
    paths: list[str | os.PathLike], series_uid: str | None, exclude: str | os.PathLike | None
) -> list[InputItem]:
    """The inputs of several INPUT paths, each named under the path's own name; names must not clash."""
    from medseg.io.formats import strip_image_suffix

    if series_uid is not None:
        raise ConfigError("series_uid selects a series of one DICOM folder; give one INPUT with it",
                          param="series_uid")
    items: list[InputItem] = []
    for path in paths:
        root = Path(path)
        name = strip_image_suffix(root.name) or root.name
        try:
            found, single = discover_inputs(root, None, exclude)
        except MedsegError as exc:  # a missing or empty path is one failed input of the batch
            items.append(InputItem(name, root, None, str(exc)))
            continue
        items += [
            InputItem(name if single else f"{name}/{i.name}", i.path, i.series_uid, i.error) for i in found
        ]
    names = [item.name for item in items]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise InputError(
            f"several inputs would write the same result folder ({', '.join(clashes[:5])}): give "
            "inputs with different names, or put them in one folder"
        )
    return items
