"""RT Structure Set (RTSTRUCT): write a label map as planar contours, and rasterise one back.

Radiotherapy planning systems (Eclipse, RayStation, Monaco) and many PACS viewers read structure
sets, not DICOM SEG, so ``medseg segment`` writes both for DICOM input. highdicom (0.28) has no
RTSTRUCT writer and rt-utils (its last release 2023) traces contours through pixel centres with
OpenCV and joins holes with "keyholes"; this writer uses pydicom for the dataset and scikit-image's
marching squares for the contours instead:

* one ROI per foreground label with the bundle's label name, display colour and coded concept
  (RT ROI Identification Code Sequence, the same SNOMED CT / private code as the SEG segment);
* per source slice, every closed contour of the label's iso-line at 0.5
  (:func:`skimage.measure.find_contours`): the line runs half-way between a foreground pixel centre
  and its background neighbour, so an island, a hole or an island inside a hole each give one
  CLOSED_PLANAR contour, and filling every contour of a plane by the even-odd rule (what RT
  systems do) gives back exactly the foreground pixel centres. Vertices on straight runs are
  dropped, which leaves each polygon unchanged;
* points in patient coordinates (LPS, mm) through the source grid's affine, each contour referencing
  its source image (and frame, for a multi-frame source); the structure set references the study,
  series and frame of reference of the source, and shares its patient and study attributes.

:func:`rasterise_rtstruct` maps every contour back onto a grid (the source series') with the same
even-odd rule; the tests compare it with ``segmentation.nii.gz``.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DicomError, GeometryError, InputError
from medseg.io.atomic import atomic_write
from medseg.io.dicom_seg import RESEARCH_ONLY, research_series_description
from medseg.io.seg_concepts import SegmentSpec

__all__ = [
    "RTSTRUCT_SOP_CLASS",
    "label_contours",
    "write_rtstruct",
    "rasterise_rtstruct",
    "fill_even_odd",
]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
# Study Component Management SOP Class (retired), the value PS3.3 C.8.8.5 examples and RT systems use
# for the RT Referenced Study Sequence.
_STUDY_REFERENCE_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
# Largest distance (voxels) of a contour from a slice of the grid it is rasterised on.
_PLANE_TOLERANCE = 0.1
_LPS = np.diag([-1.0, -1.0, 1.0])
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """A closed polygon without the vertices that lie on the line through their two neighbours."""
    before, after = np.roll(points, 1, axis=0), np.roll(points, -1, axis=0)
    a, b = points - before, after - points
    # marching-squares vertices lie on a half-pixel lattice: the cross product is exact
    keep = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0] != 0
    return points[keep]


def label_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed contours (pixel coordinates, (N, 2) in the mask's axes) of a 2-D mask's iso-line at 0.5.

    Foreground pixels touching only at a corner are kept apart (8-connected background), so every
    contour is a simple polygon; filling all of them by the even-odd rule gives the mask back.
    Vertices on a straight run are dropped (the polygon is unchanged).

    Args:
        mask: boolean 2-D mask.
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, dtype=np.uint8), 1)  # every contour closes inside the padding
    contours = []
    for line in find_contours(padded, 0.5, fully_connected="low"):
        if len(line) > 1 and np.array_equal(line[0], line[-1]):
            line = line[:-1]  # RTSTRUCT closes a CLOSED_PLANAR contour implicitly
        points = _drop_collinear(line) - 1.0
        if len(points) >= 3:
            contours.append(points)
    return contours


def _code_item(concept: Any) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue = concept.value
    item.CodingSchemeDesignator = concept.scheme
    item.CodeMeaning = concept.meaning[:64]
    return item


def _referenced_image(sop_class: str, sop_uid: str, frame: int | None) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_uid
    if frame is not None:
        item.ReferencedFrameNumber = frame
    return item


def _lps_points(points_ij: np.ndarray, k: int, affine: np.ndarray) -> np.ndarray:
    voxels = np.column_stack([points_ij, np.full(len(points_ij), float(k)), np.ones(len(points_ij))])
    ras = voxels @ np.asarray(affine, dtype=np.float64).T
    return ras[:, :3] @ _LPS


def _contour_data(points: np.ndarray) -> Any:
    """Contour Data (3006,0050) as a raw DS element: pydicom would check every value one by one.

    Args:
        points: (N, 3) coordinates in mm; written with 0.1 um resolution (DS holds 16 characters).
    """
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    text = "\\".join(f"{v:.10g}" for v in np.round(points.reshape(-1), 4) + 0.0).encode("ascii")
    if len(text) % 2:
        text += b" "
    return RawDataElement(Tag(0x3006, 0x0050), "DS", len(text), text, 0, False, True)


def _read_contour_data(contour: Any) -> np.ndarray:
    """The (N, 3) points of a contour item, parsed from the raw bytes when pydicom has not yet."""
    element = contour.get_item(0x30060050)
    value = element.value
    if isinstance(value, bytes):
        return np.asarray(value.strip(b" \0").split(b"\\"), dtype=np.float64).reshape(-1, 3)
    return np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)


def write_rtstruct(
    labelmap: np.ndarray,
    affine: np.ndarray,
    source_meta: Mapping[str, Any],
    segments: Sequence[SegmentSpec],
    path: str | os.PathLike,
    *,
    algorithm_name: str,
    algorithm_version: str,
    software_versions: str,
) -> dict[str, str]:
    """Write an (I, J, K) label map on a DICOM series' grid as an RTSTRUCT referencing that series.

    Args:
        labelmap: integer label map indexed like the loaded source (:func:`medseg.io.load_image`).
        affine: its voxel-to-world RAS affine (the loaded source's ``affine``).
        source_meta: the source image's meta: ``files``, ``sop_instance_uids``, ``frame_numbers``,
            ``sop_class_uid``, ``series_uid``, ``frame_of_reference_uid``.
        segments: one :class:`SegmentSpec` per foreground label (an ROI each, also when empty).
        path: output file; written to a temporary name in the same folder, then renamed.
        algorithm_name: the bundle's name (ROI generation description, structure set label).
        algorithm_version: the bundle's version.
        software_versions: software version string (e.g. ``"medseg 0.1.0"``).

    Returns:
        ``series_instance_uid`` and ``sop_instance_uid`` of the RTSTRUCT.

    Raises:
        DicomError: the source is not a DICOM series, or lacks a frame of reference.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    labelmap = np.asarray(labelmap)
    uids = [str(u) for u in source_meta.get("sop_instance_uids") or []]
    files = list(source_meta.get("files") or [])
    if labelmap.ndim != 3:
        raise InputError(f"an RTSTRUCT is written from a 3-D label map, got shape {labelmap.shape}")
    if not uids or not files:
        raise DicomError("an RTSTRUCT can only be written for DICOM input (the source has no SOP instances)")
    if len(uids) != labelmap.shape[2]:
        raise DicomError(f"the label map has {labelmap.shape[2]} slices but the source series {len(uids)}")
    frame_of_reference = str(source_meta.get("frame_of_reference_uid") or "")
    if not frame_of_reference:
        raise DicomError(
            "the source series has no FrameOfReferenceUID: an RTSTRUCT cannot place its contours; "
            "use the DICOM SEG (segmentation.dcm) instead"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
    sop_class = str(source_meta.get("sop_class_uid") or first.SOPClassUID)
    multi_frame = int(first.get("NumberOfFrames", None) or 1) > 1
    frames = [int(f) for f in source_meta.get("frame_numbers") or [1] * len(uids)]
    images = [
        _referenced_image(sop_class, uid, frame if multi_frame else None)
        for uid, frame in zip(uids, frames, strict=True)
    ]

    now = datetime.datetime.now()
    series_uid, sop_uid = generate_uid(), generate_uid()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    for keyword in _PATIENT_STUDY:  # patient and general study modules: the source's (type 2: may be empty)
        setattr(ds, keyword, first.get(keyword, ""))
    # frame of reference module: the source's
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    # RT series and general equipment
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_uid
    try:
        source_number = int(first.get("SeriesNumber", None) or 0)
    except (TypeError, ValueError):
        source_number = 0
    ds.SeriesNumber = source_number + 2000 if 0 <= source_number < 2**31 - 2001 else 2000
    ds.SeriesDescription = research_series_description(algorithm_name, "RT")
    ds.OperatorsName = ""
    ds.Manufacturer = "medseg"
    ds.ManufacturerModelName = f"medseg {algorithm_name}"[:64]
    ds.SoftwareVersions = software_versions[:64]
    # structure set
    ds.StructureSetLabel = "medseg"
    ds.StructureSetName = f"{algorithm_name} {algorithm_version}"[:64]
    ds.StructureSetDescription = f"Automatic segmentation; {RESEARCH_ONLY}"
    ds.InstanceNumber = 1
    ds.StructureSetDate = ds.InstanceCreationDate
    ds.StructureSetTime = ds.InstanceCreationTime
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = str(source_meta.get("series_uid") or first.SeriesInstanceUID)
    series_ref.ContourImageSequence = DicomSequence(images)
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_REFERENCE_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_of_reference
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_ref])

    rois, roi_contours, observations = [], [], []
    for spec in segments:
        roi = Dataset()
        roi.ROINumber = spec.number
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        roi.ROIName = spec.label[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"{algorithm_name} {algorithm_version}; {RESEARCH_ONLY}"[:64]
        rois.append(roi)

        contours = []
        mask = labelmap == spec.value
        for k in np.flatnonzero(mask.any(axis=(0, 1))):
            for points in label_contours(mask[:, :, k]):
                contour = Dataset()
                contour.ContourImageSequence = DicomSequence([images[k]])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourNumber = len(contours) + 1
                contour[0x30060050] = _contour_data(_lps_points(points, int(k), affine))
                # written as encoded: pydicom then copies the raw Contour Data instead of parsing it back
                contour.set_original_encoding(False, True, contour._character_set)
                contours.append(contour)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = spec.number
        roi_contour.ROIDisplayColor = list(spec.color)
        if contours:  # type 3: absent for an empty ROI
            roi_contour.ContourSequence = DicomSequence(contours)
        roi_contours.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = spec.number
        observation.ReferencedROINumber = spec.number
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        observation.RTROIIdentificationCodeSequence = DicomSequence([_code_item(spec.type)])
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.ApprovalStatus = "UNAPPROVED"

    def _write(tmp: Path) -> None:
        pydicom.dcmwrite(str(tmp), ds, enforce_file_format=True)

    atomic_write(path, _write)
    return {"series_instance_uid": str(series_uid), "sop_instance_uid": str(sop_uid)}


def fill_even_odd(polygons: Sequence[np.ndarray], shape: Sequence[int]) -> np.ndarray:
    """Pixels whose centre lies inside an odd number of the polygons (the even-odd rule of RT systems).

    A scanline fill in numpy: every polygon edge crossing a pixel row toggles the pixels to the right
    of the crossing, so the holes and islands of one plane come out of one pass.

    Args:
        polygons: (N, 2) vertex arrays in pixel coordinates (axis 0, axis 1) of the plane.
        shape: the plane's (rows, columns).
    """
    rows, cols = int(shape[0]), int(shape[1])
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    for polygon in polygons:
        x0, y0 = polygon[:, 0], polygon[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        first = np.ceil(np.minimum(x0, x1)).astype(np.int64)  # rows r with min <= r < max
        count = np.ceil(np.maximum(x0, x1)).astype(np.int64) - first
        edge = np.repeat(np.arange(len(x0)), count)
        if not len(edge):
            continue
        r = first[edge] + np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count)
        c = y0[edge] + (r - x0[edge]) * (y1[edge] - y0[edge]) / (x1[edge] - x0[edge])
        start = np.clip(np.floor(c).astype(np.int64) + 1, 0, cols)  # columns j > c
        keep = (r >= 0) & (r < rows)
        np.add.at(toggles, (r[keep], start[keep]), 1)
    return (np.cumsum(toggles, axis=1)[:, :cols] % 2).astype(bool)


def rasterise_rtstruct(
    path: str | os.PathLike, affine: np.ndarray, shape: Sequence[int]
) -> dict[str, np.ndarray]:
    """Fill every ROI's contours onto an (I, J, K) grid by the even-odd rule, plane by plane.

    Args:
        path: an RTSTRUCT file.
        affine: the grid's voxel-to-world RAS affine (e.g. the referenced series loaded with
            :func:`medseg.io.load_image`).
        shape: the grid's (I, J, K) shape.

    Returns:
        ROI name -> boolean mask on the grid.

    Raises:
        GeometryError: a contour does not lie in a slice of the grid.
    """
    import pydicom

    ds = pydicom.dcmread(str(path))
    names = {int(r.ROINumber): str(r.ROIName) for r in ds.StructureSetROISequence}
    to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    grid = tuple(int(s) for s in shape)
    masks = {}
    for roi_contour in ds.ROIContourSequence:
        number = int(roi_contour.ReferencedROINumber)
        planes: dict[int, list[np.ndarray]] = {}
        for contour in roi_contour.get("ContourSequence", None) or []:
            lps = _read_contour_data(contour)
            ras = np.column_stack([lps @ _LPS, np.ones(len(lps))])
            ijk = (ras @ to_voxel.T)[:, :3]
            k = float(np.round(ijk[:, 2].mean()))
            if np.abs(ijk[:, 2] - k).max() > _PLANE_TOLERANCE or not 0 <= k < grid[2]:
                raise GeometryError(
                    f"a contour of ROI {names.get(number, number)!r} does not lie in a slice of the grid; "
                    "rasterise it on the grid of the series the RTSTRUCT references"
                )
            planes.setdefault(int(k), []).append(ijk[:, :2])
        mask = np.zeros(grid, dtype=bool)
        for k, polygons in planes.items():
            mask[:, :, k] = fill_even_odd(polygons, grid[:2])
        masks[names.get(number, str(number))] = mask
    return masks
