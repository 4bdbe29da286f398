"""DICOM series: scan a folder, validate the geometry of a series, decode it into a volume.

Which library does what, and why:

* **pydicom reads every header** (``stop_before_pixels=True``, ``force=False``). It is fast,
  needs no decoding plugin to parse headers, exposes the enhanced multi-frame functional groups
  (PerFrame/SharedFunctionalGroupsSequence with PlanePosition, PlaneOrientation, PixelMeasures and
  PixelValueTransformation) that ITK/GDCM flatten away, and leaves the sorting and validation
  of the slices to us: slices are sorted by their position along the slice normal, and a series
  with a missing slice, uneven spacing, tilt, mixed sizes or orientations is refused
  (:mod:`medseg.io.geometry`) instead of being silently resampled or mis-stacked.
  Files are recognised as DICOM by the ``DICM`` preamble / pydicom's InvalidDicomError, never by
  their extension, so LICENSE, NRRD, PNG or JPEG files lying next to a series are skipped.
* **pydicom decodes the pixels** of the sorted, validated file list (``pixel_array``, then the
  per-slice or per-frame RescaleSlope/RescaleIntercept). All series in the test data are
  uncompressed, pydicom decodes them byte-exactly, and the rescale stays under our control
  (per frame for enhanced objects, where GDCM applies only one value).
* **SimpleITK (GDCM) is the fallback decoder** for compressed transfer syntaxes that pydicom cannot
  decode without optional plugins (JPEG lossless, JPEG 2000 ...). It is run on *our* sorted file
  list, one file at a time, so its own series sorting never decides the geometry. The test suite
  decodes every real series with both and checks that they agree voxel for voxel.

A DICOM file that fails to decode (header or pixels, e.g. truncated) is corrupt and refused
with its file name. Patient-identifying attributes are never copied into the metadata.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medseg.errors import DicomError, GeometryError, InputError, SeriesSelectionError, first_line
from medseg.io.geometry import (
    MAX_ORIENTATION_DIFFERENCE,
    GeometryProblem,
    StackGeometry,
    analyse_stack,
    lps_affine,
    lps_to_ras,
    orientation_code,
    slice_normal,
)

__all__ = [
    "SeriesInfo",
    "UnreadableFile",
    "FolderScan",
    "scan_folder",
    "scan_series",
    "read_dicom",
    "is_dicom_file",
    "functional_group_item",
    "DECODERS",
]

logger = logging.getLogger(__name__)

DECODERS = ("auto", "pydicom", "simpleitk")

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# SOP classes that never hold a volume to segment, even when they carry pixel data and plane positions.
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66",  # Raw Data
    "1.2.840.10008.5.1.4.1.1.67",  # Real World Value Mapping
}
_NON_IMAGE_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.66.",  # SEG, label-map SEG, surface SEG, registrations, fiducials
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.481.",  # RT dose, structure set, plan, records (RT Image handled below)
)
_RT_IMAGE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.1"
_UNCOMPRESSED_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
}
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
_REPLACE = "replace it or re-export the series"


@dataclass
class SeriesInfo:
    """One DICOM series found by :func:`scan_series`.

    Attributes:
        uid: SeriesInstanceUID.
        modality: Modality (CT, MR, SEG, ...).
        description: SeriesDescription ("" when absent).
        slices: number of distinct slices (single-frame files) or frames (multi-frame objects).
        size: ``[columns, rows, slices]``, or None without pixel data.
        spacing: ``[x, y, z]`` in mm: column spacing, row spacing, slice spacing (None where unknown).
        orientation: 3-letter code of the voxel axes as stored, e.g. ``"LPS"`` for an axial DICOM
            stack; None where unknown.
        image: True for an image series that can be loaded as a volume; False for SEG, SR,
            RTSTRUCT, presentation states, key objects, and objects without pixel data or plane position.
        problems: one line per problem found (geometry, corrupt or duplicate files ...).
        files: the files of the series; for an image series sorted along the slice normal.
        study_uid: StudyInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID ("" when absent).
        sop_class: name of the SOPClassUID of the first file.
    """

    uid: str
    modality: str
    description: str
    slices: int
    size: list[int] | None
    spacing: list[float | None] | None
    orientation: str | None
    image: bool
    problems: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_class: str = ""

    def summary(self) -> str:
        """``uid (modality, 'description', n slices)`` for messages."""
        return f"{self.uid} ({self.modality or '?'}, '{self.description}', {self.slices} slices)"


@dataclass(frozen=True)
class UnreadableFile:
    """A file that starts like DICOM but whose header cannot be read (its series is unknown)."""

    path: str
    reason: str


@dataclass
class _Frame:
    """One slice: a single-frame file or one frame of a multi-frame object."""

    path: str
    sop_instance_uid: str
    number: int  # 1-based frame number inside its file
    rows: int
    columns: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    slope: float
    intercept: float


@dataclass
class _Header:
    """The parts of one file's header that medseg uses (no patient identifiers)."""

    path: str
    sop_class_uid: str
    sop_class_name: str
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    description: str
    rows: int | None
    columns: int | None
    frames: list[_Frame]
    image: bool
    slice_thickness: float | None
    spacing_between_slices: float | None
    transfer_syntax: str
    samples_per_pixel: int
    problems: list[GeometryProblem]


@dataclass
class _Series:
    info: SeriesInfo
    headers: list[_Header]
    frames: list[_Frame]  # sorted along the slice normal for a valid image series
    problems: list[GeometryProblem]
    ras_affine: np.ndarray | None = None
    geometry: StackGeometry | None = None


@dataclass
class FolderScan:
    """Everything :func:`scan_folder` found.

    Attributes:
        root: the scanned folder or file.
        series: the series found, each with its :class:`SeriesInfo`.
        unreadable: DICOM files whose header could not be read.
    """

    root: str
    series: list[_Series]
    unreadable: list[UnreadableFile]

    @property
    def infos(self) -> list[SeriesInfo]:
        return [s.info for s in self.series]


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True when the file starts with the 128-byte preamble and the ``DICM`` magic."""
    try:
        with open(path, "rb") as fp:
            head = fp.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _is_non_image_sop_class(uid: str) -> bool:
    if uid in _NON_IMAGE_SOP_CLASSES:
        return True
    return uid != _RT_IMAGE_SOP_CLASS and uid.startswith(_NON_IMAGE_SOP_CLASS_PREFIXES)


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(
            float(v)
            for v in (value if isinstance(value, Sequence) and not isinstance(value, str) else [value])
        )
    except (TypeError, ValueError):
        return None
    return values if len(values) == count else None


def _float(value: Any) -> float | None:
    values = _floats(value, 1)
    return values[0] if values else None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, None)
    return "" if value is None else str(value).strip()


def functional_group_item(ds: Any, frame_index: int, sequence: str) -> Any | None:
    """The first item of a functional group macro for one frame of a multi-frame object, or None.

    The per-frame functional group wins over the shared one, as PS3.3 C.7.6.16 says.

    Args:
        ds: an enhanced multi-frame dataset (image or SEG).
        frame_index: zero-based frame index.
        sequence: keyword of the macro's sequence, e.g. ``"PlanePositionSequence"``.
    """
    # highdicom >= 0.24 parses functional groups itself (highdicom.Image); 0.22 (MONAI Label stack) does not
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", None)
    shared = ds.get("SharedFunctionalGroupsSequence", None)
    candidates = []
    if per_frame is not None and frame_index < len(per_frame):
        candidates.append(per_frame[frame_index])
    if shared is not None and len(shared) > 0:
        candidates.append(shared[0])
    for groups in candidates:
        item = groups.get(sequence, None)
        if item is not None and len(item) > 0:
            return item[0]
    return None


def _read_header(path: str) -> _Header | None:
    """Read one file's header; None for a file that is not DICOM (or a DICOMDIR).

    Raises:
        _CorruptHeader: the file starts like DICOM but its header cannot be read.
    """
    if not is_dicom_file(path):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd but readable values
            with open(path, "rb") as fp:
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=False)
                pixel_offset = fp.tell()  # pydicom stops right before the pixel data element
            header = _parse_header(path, ds, pixel_offset)
    except InvalidDicomError:
        return None
    except _CorruptHeader:
        raise
    except Exception as exc:  # any parse failure of a file with the DICM magic means it is corrupt
        raise _CorruptHeader(f"{_exception_name(exc)}: {exc}") from exc
    return header


class _CorruptHeader(Exception):
    pass


def _exception_name(exc: BaseException) -> str:
    kind = type(exc)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _parse_header(path: str, ds: Any, pixel_offset: int) -> _Header | None:
    sop_class_uid = _text(ds, "SOPClassUID") or _text(ds.get("file_meta", {}), "MediaStorageSOPClassUID")
    if sop_class_uid == _DICOMDIR_SOP_CLASS:
        return None
    sop_instance_uid = _text(ds, "SOPInstanceUID")
    series_uid = _text(ds, "SeriesInstanceUID")
    if not sop_instance_uid or not series_uid:
        raise _CorruptHeader("no SOPInstanceUID or SeriesInstanceUID")
    try:
        sop_class_name = pydicom.uid.UID(sop_class_uid).name
    except Exception:  # unknown or malformed UID
        sop_class_name = sop_class_uid
    rows = int(ds.Rows) if ds.get("Rows", None) is not None else None
    columns = int(ds.Columns) if ds.get("Columns", None) is not None else None
    n_frames = int(ds.get("NumberOfFrames", None) or 1)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    samples = int(ds.get("SamplesPerPixel", None) or 1)
    problems: list[GeometryProblem] = []

    frames: list[_Frame] = []
    thickness = _float(ds.get("SliceThickness", None))
    between = _float(ds.get("SpacingBetweenSlices", None))
    for index in range(n_frames):
        position = _floats(ds.get("ImagePositionPatient", None), 3)
        orientation = _floats(ds.get("ImageOrientationPatient", None), 6)
        spacing = _floats(ds.get("PixelSpacing", None), 2)
        slope = _float(ds.get("RescaleSlope", None))
        intercept = _float(ds.get("RescaleIntercept", None))
        if enhanced:
            item = functional_group_item(ds, index, "PlanePositionSequence")
            if item is not None:
                position = _floats(item.get("ImagePositionPatient", None), 3)
            item = functional_group_item(ds, index, "PlaneOrientationSequence")
            if item is not None:
                orientation = _floats(item.get("ImageOrientationPatient", None), 6)
            item = functional_group_item(ds, index, "PixelMeasuresSequence")
            if item is not None:
                spacing = _floats(item.get("PixelSpacing", None), 2) or spacing
                thickness = _float(item.get("SliceThickness", None)) or thickness
                between = _float(item.get("SpacingBetweenSlices", None)) or between
            item = functional_group_item(ds, index, "PixelValueTransformationSequence")
            if item is not None:
                slope = _float(item.get("RescaleSlope", None))
                intercept = _float(item.get("RescaleIntercept", None))
        elif n_frames > 1 and index > 0:
            position = None  # a classic multi-frame object has no per-frame position
        frames.append(
            _Frame(
                path=path,
                sop_instance_uid=sop_instance_uid,
                number=index + 1,
                rows=rows or 0,
                columns=columns or 0,
                position=position,
                orientation=orientation,
                pixel_spacing=spacing,
                slope=1.0 if slope is None else slope,
                intercept=0.0 if intercept is None else intercept,
            )
        )

    has_geometry = frames[0].position is not None and frames[0].orientation is not None
    non_image_class = _is_non_image_sop_class(sop_class_uid)
    image = bool(rows and columns and has_geometry and not non_image_class)
    # an image object (Rows given, or an "... Image Storage" class) needs pixel data; a deflated file
    # is inflated in memory, so the file offset says nothing there
    expects_pixels = not non_image_class and (bool(rows) or "Image Storage" in sop_class_name)
    if expects_pixels and transfer_syntax != _DEFLATED and os.path.getsize(path) <= pixel_offset:
        # an image object without pixel data is a file cut short (its geometry may be cut off too)
        problems.append(
            GeometryProblem(
                DicomError, f"{path} is a corrupt DICOM file: it has no pixel data (truncated?); {_REPLACE}"
            )
        )
    elif image:
        if n_frames > 1 and not enhanced:
            problems.append(
                GeometryProblem(
                    DicomError,
                    f"{path} is a multi-frame object without per-frame plane positions ({sop_class_name}); "
                    "it is not a volume medseg can place in space",
                )
            )
        if samples != 1:
            problems.append(
                GeometryProblem(
                    DicomError,
                    f"{path} has {samples} samples per pixel (colour); only greyscale series can be segmented",
                )
            )
        problems.extend(
            _pixel_data_problems(path, ds, pixel_offset, rows, columns, n_frames, samples, transfer_syntax)
        )
    return _Header(
        path=path,
        sop_class_uid=sop_class_uid,
        sop_class_name=sop_class_name,
        sop_instance_uid=sop_instance_uid,
        series_uid=series_uid,
        study_uid=_text(ds, "StudyInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        modality=_text(ds, "Modality"),
        description=_text(ds, "SeriesDescription"),
        rows=rows,
        columns=columns,
        frames=frames,
        image=image,
        slice_thickness=thickness,
        spacing_between_slices=between,
        transfer_syntax=transfer_syntax,
        samples_per_pixel=samples,
        problems=problems,
    )


def _pixel_data_problems(
    path: str,
    ds: Any,
    offset: int,
    rows: int | None,
    columns: int | None,
    frames: int,
    samples: int,
    syntax: str,
) -> list[GeometryProblem]:
    """Detect a truncated file from its header alone: fewer bytes left than the pixel data needs."""
    remaining = os.path.getsize(path) - offset
    if syntax not in _UNCOMPRESSED_TRANSFER_SYNTAXES or not rows or not columns or remaining <= 0:
        return []  # encapsulated pixel data: only decoding can tell
    bits = int(ds.get("BitsAllocated", None) or 0)
    if bits <= 0:
        return [GeometryProblem(DicomError, f"{path} is a corrupt DICOM file: no BitsAllocated; {_REPLACE}")]
    voxels = rows * columns * frames * samples
    expected = math.ceil(voxels / 8) if bits == 1 else voxels * math.ceil(bits / 8)
    element_header = 8 if syntax == "1.2.840.10008.1.2" else 12
    available = remaining - element_header
    if available < expected:
        return [
            GeometryProblem(
                DicomError,
                f"{path} is a corrupt DICOM file: {max(available, 0)} bytes of pixel data where {rows}x{columns}x"
                f"{frames} voxels of {bits} bits need {expected} (truncated?); {_REPLACE}",
            )
        ]
    return []


def _walk(root: Path) -> Iterable[str]:
    if root.is_file():
        yield str(root)
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for filename in sorted(filenames):
            yield os.path.join(dirpath, filename)


def scan_folder(path: str | os.PathLike) -> FolderScan:
    """Read the header of every DICOM file under ``path`` (recursively) and group them into series.

    Args:
        path: a folder (searched recursively) or a single DICOM file.

    Raises:
        InputError: the path does not exist, or holds no DICOM file at all.
    """
    root = Path(path)
    if not root.exists():
        raise InputError(f"{root} does not exist; give a DICOM folder, a NIfTI or an NRRD file")
    if not root.is_dir() and not root.is_file():
        raise InputError(f"{root} is neither a file nor a folder")
    headers: list[_Header] = []
    unreadable: list[UnreadableFile] = []
    seen_any = False
    for file in _walk(root):
        seen_any = True
        try:
            header = _read_header(file)
        except _CorruptHeader as exc:
            unreadable.append(UnreadableFile(file, str(exc)))
            continue
        except OSError as exc:
            unreadable.append(UnreadableFile(file, f"cannot be read: {exc}"))
            continue
        if header is not None:
            headers.append(header)
    if not headers and not unreadable:
        what = "is empty" if not seen_any else "holds no DICOM file (none starts with the DICM preamble)"
        raise InputError(f"{root} {what}; point to the folder that holds the DICOM series")

    by_series: dict[str, list[_Header]] = defaultdict(list)
    for header in headers:
        by_series[header.series_uid].append(header)
    series = [_build_series(uid, members) for uid, members in by_series.items()]
    series.sort(key=lambda s: (s.headers[0].path, s.info.uid))
    return FolderScan(root=str(root), series=series, unreadable=unreadable)


def scan_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """List every DICOM series under ``folder`` (recursively), with the problems of each.

    Headers only are read (fast). Files that are not DICOM are skipped; DICOM files whose
    header cannot be read are logged as warnings (see :func:`scan_folder` to get them).

    Args:
        folder: folder to search, or a single DICOM file.

    Raises:
        InputError: the folder does not exist or holds no DICOM file.
    """
    scan = scan_folder(folder)
    for bad in scan.unreadable:
        logger.warning("%s is not a readable DICOM file (%s)", bad.path, bad.reason)
    return scan.infos


def _same_file_content(a: str, b: str) -> bool:
    """Byte-identical files (only called for the rare SOPInstanceUID collisions)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block_a, block_b = fa.read(1 << 20), fb.read(1 << 20)
            if block_a != block_b:
                return False
            if not block_a:
                return True


def _build_series(uid: str, members: list[_Header]) -> _Series:
    label = f"series {uid}"
    problems: list[GeometryProblem] = []
    unique: dict[str, _Header] = {}
    for header in members:  # members arrive in path order, so the kept copy is reproducible
        kept = unique.get(header.sop_instance_uid)
        if kept is None:
            unique[header.sop_instance_uid] = header
        elif _same_file_content(kept.path, header.path):
            problems.append(
                GeometryProblem(
                    DicomError,
                    f"{header.path} duplicates {kept.path} (identical copy, SOPInstanceUID "
                    f"{header.sop_instance_uid}); counted once",
                    fatal=False,
                )
            )
        else:  # two different objects claim one identity: neither can be trusted to be the right one
            problems.append(
                GeometryProblem(
                    DicomError,
                    f"{header.path} duplicates the SOPInstanceUID {header.sop_instance_uid} of {kept.path} but "
                    "has different content; counted once, remove the wrong file or re-export the series",
                )
            )
    headers = list(unique.values())
    for header in headers:
        problems.extend(header.problems)
    first = headers[0]
    image = any(h.image for h in headers)
    frames = [f for h in headers for f in h.frames]
    info = SeriesInfo(
        uid=uid,
        modality=first.modality,
        description=first.description,
        slices=len(frames),
        size=[first.columns, first.rows, len(frames)] if first.rows and first.columns else None,
        spacing=None,
        orientation=None,
        image=image,
        files=sorted(h.path for h in headers),
        study_uid=first.study_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        sop_class=first.sop_class_name,
    )
    series = _Series(info=info, headers=headers, frames=frames, problems=problems)
    if image:
        _check_image_series(series, label)
    else:
        _describe_non_image(series)
    info.problems = [p.message for p in series.problems]
    return series


def _describe_non_image(series: _Series) -> None:
    frame = series.frames[0]
    if frame.pixel_spacing is not None:
        series.info.spacing = [frame.pixel_spacing[1], frame.pixel_spacing[0], None]
    if frame.orientation is not None:
        try:
            normal = slice_normal(frame.orientation)
        except GeometryError:
            return
        affine = lps_affine(frame.orientation, frame.pixel_spacing or (1.0, 1.0), (0, 0, 0), normal)
        series.info.orientation = orientation_code(lps_to_ras(affine))


def _check_image_series(series: _Series, label: str) -> None:
    info, frames, problems = series.info, series.frames, series.problems
    non_image = [h for h in series.headers if not h.image]
    if non_image:
        problems.append(
            GeometryProblem(
                DicomError,
                f"{label} mixes image and non-image objects (e.g. {non_image[0].path}: {non_image[0].sop_class_name}, "
                "no pixel data or plane position); remove them from the series",
            )
        )
        frames = [f for h in series.headers if h.image for f in h.frames]
        series.frames = frames
        info.slices = len(frames)
    sizes = Counter((f.rows, f.columns) for f in frames)
    if len(sizes) > 1:
        (common, _), *_ = sizes.most_common()
        odd = next(f for f in frames if (f.rows, f.columns) != common)
        listing = ", ".join(f"{c}x{r} ({n} slices)" for (r, c), n in sizes.most_common())
        problems.append(
            GeometryProblem(
                DicomError,
                f"{label} mixes image sizes (columns x rows): {listing}, e.g. {odd.path}; "
                "re-export the series or remove the stray files",
            )
        )
    missing = next((f for f in frames if f.position is None or f.orientation is None), None)
    if missing is not None:
        problems.append(
            GeometryProblem(
                GeometryError,
                f"{label}: {missing.path} (frame {missing.number}) has no ImagePositionPatient or "
                "ImageOrientationPatient; the slices cannot be placed in space",
            )
        )
        return
    spacing = frames[0].pixel_spacing
    if spacing is None or min(spacing) <= 0 or any(f.pixel_spacing is None for f in frames):
        problems.append(
            GeometryProblem(
                GeometryError,
                f"{label} has no valid PixelSpacing (e.g. {frames[0].path}); the voxel size is unknown",
            )
        )
        return
    orientation = np.asarray(frames[0].orientation)
    odd = next(
        (
            f
            for f in frames
            if np.abs(np.asarray(f.orientation) - orientation).max() > MAX_ORIENTATION_DIFFERENCE
        ),
        None,
    )
    if odd is not None:
        problems.append(
            GeometryProblem(
                GeometryError,
                f"{label} mixes slice orientations: {odd.path} has ImageOrientationPatient "
                f"{_fmt(odd.orientation)} but {frames[0].path} has {_fmt(frames[0].orientation)}; "
                "split the series (localizer or reformatted slices mixed in?)",
            )
        )
        return
    odd = next((f for f in frames if not np.allclose(f.pixel_spacing, spacing, rtol=1e-4, atol=1e-6)), None)
    if odd is not None:
        problems.append(
            GeometryProblem(
                GeometryError,
                f"{label} mixes pixel spacings: {odd.path} has {_fmt(odd.pixel_spacing)} mm but "
                f"{frames[0].path} has {_fmt(spacing)} mm; re-export the series",
            )
        )
        return
    header = series.headers[0]
    multi = any(len(h.frames) > 1 for h in series.headers)
    names = [f"{os.path.basename(f.path)}" + (f" frame {f.number}" if multi else "") for f in frames]
    try:
        geometry = analyse_stack(
            np.array([f.position for f in frames]),
            frames[0].orientation,
            single_slice_spacing=header.spacing_between_slices or header.slice_thickness,
            names=names,
            label=label,
        )
    except GeometryError as exc:
        problems.append(GeometryProblem(GeometryError, f"{label}: {exc}"))
        return
    problems.extend(geometry.problems)
    series.geometry = geometry
    series.frames = [frames[i] for i in geometry.order]
    first = series.frames[0]
    affine = lps_to_ras(lps_affine(first.orientation, spacing, first.position, geometry.step))
    series.ras_affine = affine
    info.spacing = [float(spacing[1]), float(spacing[0]), float(geometry.spacing)]
    info.orientation = orientation_code(affine)
    # files in slice order, each once (a multi-frame object is one file)
    info.files = list(dict.fromkeys(f.path for f in series.frames))


def _fmt(values: Sequence[float] | None) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]" if values is not None else "none"


def _select_series(scan: FolderScan, series_uid: str | None = None) -> _Series:
    """Pick the series to load from a scan, refusing ambiguous or unknown choices.

    Raises:
        SeriesSelectionError: several image series and no ``series_uid``, or an unknown ``series_uid``.
        DicomError: only non-image series, or ``series_uid`` names a non-image series.
    """
    where = scan.root
    if not scan.series:
        bad = scan.unreadable[0]
        raise DicomError(f"{bad.path} is a corrupt DICOM file ({bad.reason}); {_REPLACE}")
    images = [s for s in scan.series if s.info.image]
    if series_uid is not None:
        series_uid = series_uid.strip()
        chosen = next((s for s in scan.series if s.info.uid == series_uid), None)
        if chosen is None:
            listing = "; ".join(s.info.summary() for s in images) or "none"
            raise SeriesSelectionError(
                f"series {series_uid} is not in {where}; image series available: {listing}"
            )
        if not chosen.info.image:
            raise DicomError(
                f"series {series_uid} in {where} is a {chosen.info.modality} object "
                f"({chosen.info.sop_class}), not an image series; choose an image series"
            )
        return chosen
    if not images:
        listing = "; ".join(f"{s.info.uid} ({s.info.modality}, {s.info.sop_class})" for s in scan.series)
        raise DicomError(
            f"{where} holds no image series, only non-image DICOM: {listing}; "
            "point to the folder of the image series"
        )
    if len(images) > 1:
        listing = "; ".join(s.info.summary() for s in images)
        raise SeriesSelectionError(
            f"{where} holds {len(images)} image series; choose one with series_uid: {listing}",
            param="series_uid",
        )
    return images[0]


def _decode_file_pydicom(path: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=False)
        return np.asarray(ds.pixel_array)


def _decode_file_simpleitk(path: str) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(path)
    image = reader.Execute()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{image.GetNumberOfComponentsPerPixel()} components per pixel")
    return sitk.GetArrayFromImage(image)  # (frames, rows, columns) or (rows, columns)


def _decode_file(header: _Header, decoder: str) -> tuple[np.ndarray, bool]:
    """Decode one file to (frames, rows, columns); the flag says whether the rescale is already applied."""
    compressed = header.transfer_syntax not in _UNCOMPRESSED_TRANSFER_SYNTAXES
    errors = []
    order = {"pydicom": ["pydicom"], "simpleitk": ["simpleitk"]}.get(
        decoder, ["pydicom", "simpleitk"] if compressed else ["pydicom"]
    )
    for name in order:
        try:
            if name == "pydicom":
                array, rescaled = _decode_file_pydicom(header.path), False
            else:
                array, rescaled = _decode_file_simpleitk(header.path), True
        except Exception as exc:  # any decoder failure on a file means the file cannot be used
            errors.append(f"{name}: {_exception_name(exc)}: {first_line(exc)}")
            continue
        expected = (len(header.frames), header.rows, header.columns)
        array = array.reshape((1, *array.shape)) if array.ndim == 2 else array
        if array.shape != expected:
            errors.append(f"{name}: decoded shape {array.shape} instead of {expected}")
            continue
        return array, rescaled
    raise DicomError(
        f"{header.path} is a corrupt DICOM file: its pixel data cannot be decoded ({'; '.join(errors)}); {_REPLACE}"
    )


def _output_dtype(
    stored: np.dtype, slopes: np.ndarray, intercepts: np.ndarray, lo: float, hi: float
) -> np.dtype:
    """The narrowest sensible type for the rescaled values: integer when slope and intercept are integers."""
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return stored
    if (
        np.all(slopes == np.round(slopes))
        and np.all(intercepts == np.round(intercepts))
        and stored.kind in "iub"
    ):
        for candidate in (np.int16, np.int32):
            info = np.iinfo(candidate)
            if info.min <= lo and hi <= info.max:
                return np.dtype(candidate)
    return np.dtype(np.float32)


def _signed_if_lossless(volume: np.ndarray) -> np.ndarray:
    """uint16/uint32 voxels as the signed type of the same or next width: torch supports few unsigned ops."""
    if volume.dtype.kind != "u" or volume.dtype.itemsize == 1 or volume.size == 0:
        return volume
    high = int(volume.max())
    for candidate in (np.int16, np.int32, np.int64):
        if np.dtype(candidate).itemsize >= volume.dtype.itemsize and high <= np.iinfo(candidate).max:
            return volume.astype(candidate)
    return volume


def read_dicom(
    path: str | os.PathLike, series_uid: str | None = None, decoder: str = "auto"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Load one validated DICOM series as an (I, J, K) array and MONAI-style metadata.

    ``I`` runs along a row (columns), ``J`` along a column (rows), ``K`` along the slices sorted on
    the slice normal. The affine is in RAS (MONAI's convention, as ``ITKReader`` gives it).

    Args:
        path: a folder holding the series (searched recursively) or one DICOM file (a single
            slice or a multi-frame object).
        series_uid: the SeriesInstanceUID to load when the folder holds several image series.
        decoder: ``"auto"`` (pydicom; SimpleITK for compressed files pydicom cannot decode),
            ``"pydicom"`` or ``"simpleitk"``.

    Returns:
        The array (stored integer type, as signed as possible without loss; float32 when the rescale
        is fractional) and
        the metadata: ``affine``, ``original_affine``, ``spatial_shape``, ``space``, ``spacing``,
        ``original_channel_dim``, ``series_uid``, ``study_uid``, ``frame_of_reference_uid``,
        ``modality``, ``series_description``, ``sop_class_uid``, ``files``, ``sop_instance_uids``
        and ``frame_numbers`` (the last two one per slice, in slice order).

    Raises:
        InputError: nothing to read; DicomError: corrupt files, non-image only, mixed sizes;
        GeometryError: missing slice, uneven spacing, tilt, mixed orientations;
        SeriesSelectionError: several image series and no (or an unknown) ``series_uid``.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    scan = scan_folder(path)
    series = _select_series(scan, series_uid)
    if scan.unreadable:
        bad = scan.unreadable[0]
        raise DicomError(
            f"{bad.path} is a corrupt DICOM file ({bad.reason}) and may belong to the series; {_REPLACE}"
        )
    fatal = [p for p in series.problems if p.fatal]
    if fatal:
        raise fatal[0].error(fatal[0].message)
    for problem in series.problems:
        logger.warning(problem.message)
    assert series.ras_affine is not None and series.geometry is not None  # guaranteed without fatal problems

    frames = series.frames
    headers = {h.path: h for h in series.headers}
    decoded: dict[str, tuple[np.ndarray, bool]] = {}
    for frame in frames:
        if frame.path not in decoded:
            decoded[frame.path] = _decode_file(headers[frame.path], decoder)
    stack = [decoded[f.path][0][f.number - 1] for f in frames]
    rescaled = [decoded[f.path][1] for f in frames]
    stored = np.result_type(*[s.dtype for s in stack])
    volume = np.stack(stack, axis=0).astype(stored, copy=False)
    slopes = np.array([1.0 if done else f.slope for f, done in zip(frames, rescaled, strict=True)])
    intercepts = np.array([0.0 if done else f.intercept for f, done in zip(frames, rescaled, strict=True)])
    if not (np.all(slopes == 1) and np.all(intercepts == 0)):
        lo, hi = float(volume.min()), float(volume.max())
        ends = [
            lo * s + c for s in (slopes.min(), slopes.max()) for c in (intercepts.min(), intercepts.max())
        ]
        ends += [
            hi * s + c for s in (slopes.min(), slopes.max()) for c in (intercepts.min(), intercepts.max())
        ]
        dtype = _output_dtype(volume.dtype, slopes, intercepts, min(ends), max(ends))
        work = np.float64 if dtype.kind == "f" else np.int64
        volume = (
            volume.astype(work) * slopes.astype(work)[:, None, None] + intercepts.astype(work)[:, None, None]
        )
        volume = volume.astype(dtype)
    volume = _signed_if_lossless(volume)
    # (K, rows, columns) -> (I = columns, J = rows, K)
    array = np.transpose(volume, (2, 1, 0))
    affine = series.ras_affine
    info = series.info
    first = series.headers[0]
    meta: dict[str, Any] = {
        "filename_or_obj": str(path),
        "affine": affine.copy(),
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(array.shape[:3]),
        "space": "RAS",
        "original_channel_dim": float("nan"),
        "spacing": np.asarray(info.spacing, dtype=np.float64),
        "series_uid": info.uid,
        "study_uid": info.study_uid,
        "frame_of_reference_uid": info.frame_of_reference_uid,
        "modality": info.modality,
        "series_description": info.description,
        "sop_class_uid": first.sop_class_uid,
        "files": list(info.files),
        "sop_instance_uids": [f.sop_instance_uid for f in frames],
        "frame_numbers": [f.number for f in frames],
    }
    return array, meta
