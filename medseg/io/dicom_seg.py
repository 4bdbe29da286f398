"""DICOM SEG: write a label map as a highdicom Segmentation, and read any SEG back onto its source grid.

Writer (:func:`write_seg`)
    One BINARY segment per foreground label, coded as :mod:`medseg.io.seg_concepts` says (category,
    type, type modifiers, CIELab display colour), algorithm identification with the bundle name and
    version (family DCM 123110 "Artificial Intelligence"). The source instances are referenced per
    frame (highdicom's Derivation Image Sequence) and the SEG shares the source's study, patient
    and frame of reference; series description and content description say "research use only,
    not for diagnosis". Empty frames are omitted.

Reader (:func:`read_seg`)
    Reads BINARY, FRACTIONAL (thresholded at one half) and LABELMAP segmentations from any
    producer (medseg, highdicom, dcmqi, Slicer) and maps every frame onto the grid of the
    referenced source series (loaded with :func:`medseg.io.load_image`) through the frame's plane
    position, orientation and pixel spacing, i.e. in patient coordinates: frames may come in any
    order, be omitted (empty), be flipped or transposed relative to the source slices, and the
    source may be stored in any slice order. A frame that does not lie on the source grid is
    refused. Without plane positions, the per-frame source image reference is used instead.

Both work with pydicom 2.4 / highdicom 0.23 and pydicom 3 / highdicom 0.28: only the
``Segmentation`` constructor arguments common to both are used, and the reader decodes the frames
with pydicom and parses the functional groups itself.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError, GeometryError, InputError, SeriesSelectionError
from medseg.io.atomic import atomic_write
from medseg.io.dicom import functional_group_item
from medseg.io.geometry import lps_to_ras
from medseg.io.seg_concepts import Concept, SegmentSpec, rgb_to_dicom_lab

__all__ = [
    "SEG_SOP_CLASS",
    "LABELMAP_SEG_SOP_CLASS",
    "RESEARCH_ONLY",
    "research_series_description",
    "SegSegment",
    "SegVolume",
    "write_seg",
    "read_seg",
]

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
LABELMAP_SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.7"
RESEARCH_ONLY = "research use only, not for diagnosis"
# Largest distance (voxels) of a SEG frame's pixel centres from the source voxel centres.
GRID_TOLERANCE_VOXELS = 0.1
# Type 2 attributes highdicom copies from the first source image into the SEG.
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _pydicom_major() -> int:
    import pydicom

    return int(pydicom.__version__.split(".")[0])


def _dcmwrite(path: Path, dataset: Any) -> None:
    import pydicom

    if _pydicom_major() >= 3:
        pydicom.dcmwrite(str(path), dataset, enforce_file_format=True)
    else:  # pydicom 2.x
        pydicom.dcmwrite(str(path), dataset, write_like_original=False)


def _fit(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "~"


def research_series_description(bundle_name: str, kind: str = "SEG") -> str:
    """``<bundle> <kind> - research use only, not for diagnosis`` within DICOM's 64 characters: the
    bundle's name is shortened, never the notice."""
    suffix = f" - {RESEARCH_ONLY}"
    return _fit(f"{bundle_name} {kind}", 64 - len(suffix)) + suffix


def _described(text: str) -> str:
    suffix = f" - {RESEARCH_ONLY}"
    return text if RESEARCH_ONLY in text else _fit(text, 64 - len(suffix)) + suffix


def write_seg(
    labelmap: np.ndarray,
    source_meta: Mapping[str, Any],
    segments: Sequence[SegmentSpec],
    path: str | os.PathLike,
    *,
    algorithm_name: str,
    algorithm_version: str,
    software_versions: str,
    algorithm_type: str = "AUTOMATIC",
    series_description: str | None = None,
) -> dict[str, str]:
    """Write an (I, J, K) label map on a DICOM series' grid as a DICOM SEG referencing that series.

    Args:
        labelmap: integer label map indexed like the loaded source (:func:`medseg.io.load_image`):
            I along the rows (the column index), J along the columns (the row index), K the slices.
        source_meta: the source image's meta from :func:`medseg.io.load_image` / ``MedsegReader``:
            ``files``, ``sop_instance_uids`` and ``frame_numbers`` (one per slice K).
        segments: one :class:`SegmentSpec` per foreground label (their ``value`` in ``labelmap``).
        path: output file; written to a temporary name in the same folder, then renamed.
        algorithm_name: algorithm name (the bundle's name).
        algorithm_version: algorithm version (the bundle's version).
        software_versions: software version string (e.g. ``"medseg 0.1.0"``).
        algorithm_type: ``AUTOMATIC`` (a model's output) or ``SEMIAUTOMATIC`` (a model's output a
            person corrected, e.g. a label submitted to MONAI Label).
        series_description: the SEG series' description (default: ``<algorithm> SEG - research use
            only, ...``); "research use only" is appended when missing.

    Returns:
        ``series_instance_uid`` and ``sop_instance_uid`` of the SEG.

    Raises:
        DicomError: the source is not a DICOM series, or one highdicom cannot reference.
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    labelmap = np.asarray(labelmap)
    uids = list(source_meta.get("sop_instance_uids") or [])
    files = list(source_meta.get("files") or [])
    frame_numbers = list(source_meta.get("frame_numbers") or [1] * len(uids))
    if labelmap.ndim != 3:
        raise InputError(f"a SEG is written from a 3-D label map, got shape {labelmap.shape}")
    if not uids or not files:
        raise DicomError("a DICOM SEG can only be written for DICOM input (the source has no SOP instances)")
    if len(uids) != labelmap.shape[2]:
        raise DicomError(f"the label map has {labelmap.shape[2]} slices but the source series {len(uids)}")
    if not segments:
        raise InputError("a DICOM SEG needs at least one segment")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in dict.fromkeys(files)]
    for ds in datasets:
        # Type 2 patient/study attributes some exporters leave out (the hippocampus crops lack the birth
        # date and sex); highdicom copies them into the SEG, where empty means "unknown"
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    missing = [u for u in uids if u not in by_uid]
    if missing:
        raise DicomError(f"source instance {missing[0]} is not in the source files; reload the series")

    # (K, rows, columns, segments): frame k of the source is labelmap[:, :, k].T
    planes = np.stack([np.asarray(labelmap == s.value).transpose(2, 1, 0) for s in segments], axis=-1)
    multi = [ds for ds in datasets if int(ds.get("NumberOfFrames", None) or 1) > 1]
    if not multi:
        source_images = [by_uid[u] for u in uids]
        pixel_array = planes
    elif len(datasets) == 1:
        source_images = datasets
        n_frames = int(datasets[0].NumberOfFrames)
        pixel_array = np.zeros((n_frames, *planes.shape[1:]), dtype=bool)
        for k, number in enumerate(frame_numbers):
            pixel_array[int(number) - 1] = planes[k]
    else:
        raise DicomError(
            "writing a SEG for a series of several multi-frame objects is not supported; "
            "segment one multi-frame object at a time"
        )

    algorithm = hd.AlgorithmIdentificationSequence(
        name=_fit(algorithm_name),
        family=codes.DCM.ArtificialIntelligence,
        version=_fit(algorithm_version),
        source="medseg",
    )
    descriptions = []
    for spec in segments:
        description = hd.seg.SegmentDescription(
            segment_number=spec.number,
            segment_label=_fit(spec.label),
            segmented_property_category=spec.category.coded(),
            segmented_property_type=spec.type.coded(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues[algorithm_type.upper()],
            algorithm_identification=algorithm,
        )
        if spec.modifiers:
            # the modifiers qualify the type: they live inside its code item (PS3.3 C.8.20.4 / 10.25)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                m.coded() for m in spec.modifiers
            ]
        description.RecommendedDisplayCIELabValue = rgb_to_dicom_lab(spec.color)
        descriptions.append(description)

    first = source_images[0]
    try:
        source_series_number = int(first.get("SeriesNumber", None) or 0)
    except (TypeError, ValueError):
        source_series_number = 0
    series_number = source_series_number + 1000 if 0 <= source_series_number < 2**31 - 1001 else 1000
    series_uid, sop_uid = hd.UID(), hd.UID()
    empty = not pixel_array.any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "segment N is empty"
        seg = hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=pixel_array,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer="medseg",
            manufacturer_model_name=_fit(f"medseg {algorithm_name}"),
            software_versions=_fit(software_versions),
            device_serial_number="0",
            content_description=_fit(
                f"{'Automatic' if algorithm_type.upper() == 'AUTOMATIC' else 'Corrected'} segmentation; {RESEARCH_ONLY}"
            ),
            content_label="RESEARCH_ONLY",
            series_description=research_series_description(algorithm_name)
            if series_description is None
            else _described(series_description),
            omit_empty_frames=not empty,  # an all-empty SEG keeps its frames: it must have at least one
        )

    atomic_write(path, lambda tmp: _dcmwrite(tmp, seg))
    return {"series_instance_uid": str(series_uid), "sop_instance_uid": str(sop_uid)}


# ----------------------------------------------------------------------------------------- reader


@dataclass(frozen=True)
class SegSegment:
    """One segment of a SEG as described in its Segment Sequence."""

    number: int
    label: str
    category: Concept | None
    type: Concept | None
    modifiers: tuple[Concept, ...] = ()
    algorithm_type: str = ""
    algorithm_name: str = ""


@dataclass
class SegVolume:
    """A SEG mapped onto the grid of its source series.

    Attributes:
        masks: boolean masks (S, I, J, K), one per segment in :attr:`segments` order, indexed like
            :attr:`source`.
        segments: the segments described by the SEG (segment 0 of a label-map SEG excluded).
        source: the source image (I, J, K) MetaTensor with its RAS ``.affine``.
        segmentation_type: ``BINARY``, ``FRACTIONAL`` or ``LABELMAP``.
        series_uid: the SEG's SeriesInstanceUID.
        referenced_series_uids: the series the SEG references.
        frame_of_reference_uid: the SEG's FrameOfReferenceUID.
        mapping: ``"geometry"`` (plane positions) or ``"references"`` (source image references).
    """

    masks: np.ndarray
    segments: list[SegSegment]
    source: Any
    segmentation_type: str
    series_uid: str
    referenced_series_uids: list[str] = field(default_factory=list)
    frame_of_reference_uid: str = ""
    mapping: str = "geometry"

    @property
    def affine(self) -> np.ndarray:
        """Voxel-to-RAS affine of the source grid."""
        return np.asarray(self.source.affine, dtype=np.float64)

    def mask(self, segment_number: int) -> np.ndarray:
        """The boolean mask (I, J, K) of one segment number."""
        for index, segment in enumerate(self.segments):
            if segment.number == segment_number:
                return self.masks[index]
        raise KeyError(f"the SEG has no segment {segment_number}")

    def labelmap(self) -> np.ndarray:
        """One label map (I, J, K) whose values are the segment numbers (0 outside every segment).

        Raises:
            InputError: segments overlap (use :attr:`masks`).
        """
        if len(self.masks) and (self.masks.sum(axis=0, dtype=np.uint16) > 1).any():
            raise InputError("the SEG's segments overlap: they cannot be one label map; use the masks")
        numbers = [s.number for s in self.segments]
        dtype = np.uint8 if max(numbers, default=0) < 256 else np.uint16
        out = np.zeros(self.masks.shape[1:], dtype=dtype)
        for number, mask in zip(numbers, self.masks, strict=True):
            out[mask] = number
        return out

    def to_metatensor(self) -> Any:
        """The label map as a MetaTensor on the source grid (for :func:`medseg.io.save_nifti`)."""
        from monai.data import MetaTensor

        return MetaTensor(self.labelmap(), affine=self.affine)


def _code(item: Any) -> Concept | None:
    if item is None:
        return None
    return Concept(
        str(item.get("CodeValue", "")),
        str(item.get("CodingSchemeDesignator", "")),
        str(item.get("CodeMeaning", "")),
    )


def _segments(ds: Any) -> list[SegSegment]:
    out = []
    for item in ds.get("SegmentSequence", []):
        types = item.get("SegmentedPropertyTypeCodeSequence", None) or []
        categories = item.get("SegmentedPropertyCategoryCodeSequence", None) or []
        type_item = types[0] if len(types) else None
        modifiers = []
        for holder in (type_item, item):  # nested in the type item (current standard) or beside it (old)
            if holder is not None:
                modifiers += [
                    _code(m) for m in holder.get("SegmentedPropertyTypeModifierCodeSequence", None) or []
                ]
        algorithms = item.get("SegmentationAlgorithmIdentificationSequence", None) or []
        out.append(
            SegSegment(
                number=int(item.SegmentNumber),
                label=str(item.get("SegmentLabel", "")),
                category=_code(categories[0]) if len(categories) else None,
                type=_code(type_item),
                modifiers=tuple(m for m in modifiers if m is not None),
                algorithm_type=str(item.get("SegmentAlgorithmType", "")),
                algorithm_name=str(
                    item.get("SegmentAlgorithmName", "")
                    or (algorithms[0].get("AlgorithmName", "") if len(algorithms) else "")
                ),
            )
        )
    return sorted(out, key=lambda s: s.number)


@dataclass
class _FrameInfo:
    segment: int | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    spacing: np.ndarray | None
    ref_uid: str | None
    ref_frame: int


def _frame_info(ds: Any, index: int) -> _FrameInfo:
    ident = functional_group_item(ds, index, "SegmentIdentificationSequence")
    position = functional_group_item(ds, index, "PlanePositionSequence")
    orientation = functional_group_item(ds, index, "PlaneOrientationSequence")
    measures = functional_group_item(ds, index, "PixelMeasuresSequence")
    derivation = functional_group_item(ds, index, "DerivationImageSequence")
    ref_uid, ref_frame = None, 1
    if derivation is not None:
        sources = derivation.get("SourceImageSequence", None) or []
        if len(sources) == 1:
            ref_uid = str(sources[0].ReferencedSOPInstanceUID)
            frames = sources[0].get("ReferencedFrameNumber", None)
            if frames is not None:
                ref_frame = int(
                    frames[0] if isinstance(frames, Sequence) and not isinstance(frames, str) else frames
                )

    def floats(item: Any, keyword: str, count: int) -> np.ndarray | None:
        value = item.get(keyword, None) if item is not None else None
        if value is None or len(value) != count:
            return None
        return np.asarray([float(v) for v in value], dtype=np.float64)

    return _FrameInfo(
        segment=int(ident.ReferencedSegmentNumber) if ident is not None else None,
        position=floats(position, "ImagePositionPatient", 3),
        orientation=floats(orientation, "ImageOrientationPatient", 6),
        spacing=floats(measures, "PixelSpacing", 2),
        ref_uid=ref_uid,
        ref_frame=ref_frame,
    )


def _resolve_source(ds: Any, seg_path: Path, source: Any) -> Any:
    from medseg.io.image import load_image

    references = [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence", None) or []]
    if source is not None and hasattr(source, "affine"):
        image = source
    else:
        folder = Path(source) if source is not None else seg_path.parent
        if not references:
            raise DicomError(
                f"{seg_path} references no source series (no ReferencedSeriesSequence); pass the source image"
            )
        image = None
        for uid in references:
            try:
                image = load_image(folder, series_uid=uid)
                break
            except SeriesSelectionError:
                continue
        if image is None:
            raise SeriesSelectionError(
                f"the source series {references[0]} of {seg_path} is not in {folder}; "
                "give the folder that holds it"
            )
    series = str(image.meta.get("series_uid", "") or "") if hasattr(image, "meta") else ""
    if series and references and series not in references:
        logger.warning(
            "mapping %s onto series %s, which it does not reference (%s)", seg_path, series, references
        )
    seg_for = str(ds.get("FrameOfReferenceUID", "") or "")
    source_for = str(image.meta.get("frame_of_reference_uid", "") or "") if hasattr(image, "meta") else ""
    if seg_for and source_for and seg_for != source_for:
        raise GeometryError(
            f"{seg_path} is in frame of reference {seg_for} but its source series in {source_for}; "
            "the SEG does not belong to this series"
        )
    return image


def _placement(
    info: _FrameInfo, rows: int, columns: int, inverse_lps: np.ndarray, shape: Sequence[int], label: str
) -> tuple[np.ndarray, ...]:
    """Index arrays (broadcasting to rows x columns) that place a frame's pixels in the source volume."""
    assert info.position is not None and info.orientation is not None and info.spacing is not None
    row_dir = info.orientation[:3] * info.spacing[1]  # step from one column to the next
    col_dir = info.orientation[3:] * info.spacing[0]  # step from one row to the next
    linear = inverse_lps[:3, :3]
    origin = linear @ info.position + inverse_lps[:3, 3]
    step_c, step_r = linear @ row_dir, linear @ col_dir
    axis_c, axis_r = int(np.argmax(np.abs(step_c))), int(np.argmax(np.abs(step_r)))
    sign_c, sign_r = int(np.sign(step_c[axis_c])), int(np.sign(step_r[axis_r]))
    if axis_c == axis_r:
        raise GeometryError(f"{label}: its rows and columns run along the same axis of the source grid")
    axis_n = 3 - axis_c - axis_r
    start = np.round(origin).astype(np.int64)
    # every pixel centre must be on a voxel centre: check the four corners against the integer grid
    predicted_c = np.zeros(3)
    predicted_c[axis_c] = sign_c
    predicted_r = np.zeros(3)
    predicted_r[axis_r] = sign_r
    error = 0.0
    for r in (0, rows - 1):
        for c in (0, columns - 1):
            exact = origin + c * step_c + r * step_r
            grid = start + c * predicted_c + r * predicted_r
            error = max(error, float(np.abs(exact - grid).max()))
    if error > GRID_TOLERANCE_VOXELS:
        raise GeometryError(
            f"{label} does not lie on the source series' voxel grid (off by up to {error:.3g} voxels); "
            "resample the SEG onto its source first"
        )
    index: list[Any] = [None, None, None]
    index[axis_c] = (start[axis_c] + sign_c * np.arange(columns))[None, :]
    index[axis_r] = (start[axis_r] + sign_r * np.arange(rows))[:, None]
    index[axis_n] = np.int64(start[axis_n])
    for axis in range(3):
        values = np.atleast_1d(index[axis])
        if values.min() < 0 or values.max() >= shape[axis]:
            raise GeometryError(f"{label} lies (partly) outside the source series' volume")
    return tuple(index)


def _decode_frames(ds: Any, path: Path) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many types for broken pixel data
        raise DicomError(
            f"{path}: the SEG's pixel data cannot be decoded ({type(exc).__name__}: {exc})"
        ) from exc
    n_frames = int(ds.get("NumberOfFrames", None) or 1)
    return pixels.reshape(n_frames, int(ds.Rows), int(ds.Columns))


def read_seg(path: str | os.PathLike, source: Any = None) -> SegVolume:
    """Read a DICOM SEG (ours or any other producer's) and map it onto its source series' grid.

    Args:
        path: the SEG file.
        source: the source image: a loaded (I, J, K) MetaTensor, or a folder (or file) holding the
            referenced series (found by its SeriesInstanceUID); by default the SEG's own folder.

    Returns:
        The masks on the source grid, the segment descriptions and the source image.

    Raises:
        DicomError: not a SEG, or undecodable; SeriesSelectionError: the source series is not found;
        GeometryError: other frame of reference, or a frame off the source grid.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    seg_path = Path(path)
    if not seg_path.is_file():
        raise InputError(f"{seg_path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(seg_path))
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DicomError(f"{seg_path} cannot be read as DICOM ({type(exc).__name__}: {exc})") from exc
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in (SEG_SOP_CLASS, LABELMAP_SEG_SOP_CLASS):
        raise DicomError(f"{seg_path} is not a DICOM SEG (SOP class {sop_class or 'missing'})")
    seg_type = str(ds.get("SegmentationType", "") or "").upper()
    if sop_class == LABELMAP_SEG_SOP_CLASS:
        seg_type = "LABELMAP"
    if seg_type not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise DicomError(f"{seg_path} has an unknown SegmentationType {seg_type!r}")

    segments = [s for s in _segments(ds) if not (seg_type == "LABELMAP" and s.number == 0)]
    if not segments:
        raise DicomError(f"{seg_path} describes no segment")
    position_of = {s.number: i for i, s in enumerate(segments)}
    image = _resolve_source(ds, seg_path, source)
    shape = tuple(int(s) for s in image.shape[:3])
    masks = np.zeros((len(segments), *shape), dtype=bool)

    pixels = _decode_frames(ds, seg_path)
    rows, columns = int(ds.Rows), int(ds.Columns)
    inverse_lps = np.linalg.inv(lps_to_ras(np.asarray(image.affine, dtype=np.float64)))
    padding = ds.get("PixelPaddingValue", None)
    max_fraction = float(ds.get("MaximumFractionalValue", None) or 255)
    source_slices = {}
    uids = image.meta.get("sop_instance_uids") if hasattr(image, "meta") else None
    if uids:
        numbers = image.meta.get("frame_numbers") or [1] * len(uids)
        source_slices = {(str(u), int(n)): k for k, (u, n) in enumerate(zip(uids, numbers, strict=True))}

    mappings = set()
    for index in range(pixels.shape[0]):
        info = _frame_info(ds, index)
        label = f"{seg_path.name} frame {index + 1}"
        frame = pixels[index]
        if seg_type == "LABELMAP":
            values = frame if padding is None else np.where(frame == int(padding), 0, frame)
            planes = [(position_of[n], values == n) for n in np.unique(values) if int(n) in position_of]
        else:
            if info.segment is None:
                raise DicomError(f"{label} names no segment (no SegmentIdentificationSequence)")
            if info.segment not in position_of:
                raise DicomError(f"{label} refers to segment {info.segment}, which the SEG does not describe")
            binary = frame > 0 if seg_type == "BINARY" else frame.astype(np.float64) * 2 >= max_fraction
            planes = [(position_of[info.segment], binary)]
        if not planes:
            continue
        if info.position is not None and info.orientation is not None and info.spacing is not None:
            where = _placement(info, rows, columns, inverse_lps, shape, label)
            if info.ref_uid is not None and (info.ref_uid, info.ref_frame) in source_slices:
                k = source_slices[(info.ref_uid, info.ref_frame)]
                placed_k = where[2] if np.ndim(where[2]) == 0 else None
                if placed_k is not None and int(placed_k) != k:
                    raise GeometryError(
                        f"{label}: its plane position puts it on slice {int(placed_k) + 1} of the source but it "
                        f"references the instance of slice {k + 1}; the SEG is inconsistent"
                    )
            mappings.add("geometry")
        elif info.ref_uid is not None and (info.ref_uid, info.ref_frame) in source_slices:
            if (rows, columns) != (shape[1], shape[0]):
                raise GeometryError(
                    f"{label} has {columns}x{rows} pixels but the source slices {shape[0]}x{shape[1]}"
                )
            k = source_slices[(info.ref_uid, info.ref_frame)]
            where = (np.arange(shape[0])[None, :], np.arange(shape[1])[:, None], np.int64(k))
            mappings.add("references")
        else:
            raise GeometryError(
                f"{label} has neither a plane position nor a reference to an instance of the source series; "
                "it cannot be placed"
            )
        for segment_index, plane in planes:
            target = masks[segment_index]
            target[where] |= plane

    return SegVolume(
        masks=masks,
        segments=segments,
        source=image,
        segmentation_type=seg_type,
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        referenced_series_uids=[
            str(i.SeriesInstanceUID) for i in ds.get("ReferencedSeriesSequence", None) or []
        ],
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        mapping="references" if mappings == {"references"} else "geometry",
    )
