"""RTSTRUCT writer and rasteriser (``medseg.io.rtstruct``).

* contours of a mask with holes, islands inside holes, corner-touching pixels and one-pixel lines
  fill back (even-odd rule) to exactly that mask, and the scanline fill agrees with
  scikit-image's polygon fill on random polygons;
* the real TCIA brain-tumour masks (Secondary Capture 0/1 series on their T1post grid; Siemens and
  GE) written as an RTSTRUCT referencing the T1post series pass dciodvfy, reference the right study,
  series, frame of reference and instances, and rasterise back at Dice >= 0.95 (in fact exactly);
* the 512x512x139 chest CT with a mask thresholded from it (body with the lungs and airways as
  holes, bone as many islands) does too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from support.dciodvfy import dciodvfy_errors

from medseg.errors import DicomError
from medseg.io import load_image
from medseg.io.rtstruct import (
    RTSTRUCT_SOP_CLASS,
    fill_even_odd,
    label_contours,
    rasterise_rtstruct,
    write_rtstruct,
)
from medseg.io.seg_concepts import segment_specs

TUMOUR_LABELS = {0: "background", 1: "tumor"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _tricky_mask() -> np.ndarray:
    mask = np.zeros((40, 48), dtype=bool)
    mask[2:30, 3:40] = True
    mask[6:24, 8:34] = False  # a hole
    mask[10:18, 14:26] = True  # an island inside the hole
    mask[12:15, 18:21] = False  # a hole inside that island
    mask[33, 5:40] = True  # a one-pixel line
    mask[35, 2] = mask[36, 3] = mask[37, 4] = True  # pixels touching only at corners
    mask[0, 0] = mask[39, 47] = True  # on the border
    return mask


def test_contours_fill_back_to_the_mask_exactly() -> None:
    mask = _tricky_mask()
    contours = label_contours(mask)
    assert len(contours) >= 8  # outer, hole, island, inner hole, line, 3 diagonal pixels, corners
    assert np.array_equal(fill_even_odd(contours, mask.shape), mask)
    rng = np.random.default_rng(0)
    for _ in range(5):  # noise: many small islands and holes
        noisy = ndimage.binary_opening(rng.random((64, 64)) > 0.45) | (rng.random((64, 64)) > 0.97)
        assert np.array_equal(fill_even_odd(label_contours(noisy), noisy.shape), noisy)


def test_scanline_fill_agrees_with_skimage() -> None:
    from skimage.draw import polygon

    rng = np.random.default_rng(1)
    for _ in range(20):
        points = rng.uniform(-3, 35, size=(int(rng.integers(3, 12)), 2))
        expected = np.zeros((32, 30), dtype=bool)
        rows, cols = polygon(points[:, 0], points[:, 1], shape=expected.shape)
        expected[rows, cols] = True
        got = fill_even_odd([points], expected.shape)
        # skimage and the scanline may differ only for pixel centres on an edge (measure zero here)
        assert (got ^ expected).sum() <= 1


def _check_references(path: Path, source: Path, series_meta: dict) -> pydicom.Dataset:
    ds = pydicom.dcmread(path)
    first = pydicom.dcmread(next(iter(sorted(source.rglob("*")))), stop_before_pixels=True)
    assert ds.SOPClassUID == RTSTRUCT_SOP_CLASS and ds.Modality == "RTSTRUCT"
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == series_meta["frame_of_reference_uid"] == ds.FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == first.StudyInstanceUID
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == series_meta["series_uid"]
    referenced = [item.ReferencedSOPInstanceUID for item in series.ContourImageSequence]
    assert referenced == [str(u) for u in series_meta["sop_instance_uids"]]
    for roi_contour in ds.ROIContourSequence:
        for contour in roi_contour.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in referenced
            assert len(contour.ContourData) == 3 * contour.NumberOfContourPoints
    return ds


def _tumour_series(shared_data: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for mask in sorted((shared_data / "tcia-brain-tumor").glob("PGBM-*/*/*MaskTumor*")):
        (t1,) = mask.parent.glob("*T1post*")
        pairs.append((mask, t1))
    assert len(pairs) == 6
    return pairs


@pytest.mark.needs_data
def test_tcia_tumour_masks_round_trip(shared_data: Path, tmp_path: Path) -> None:
    specs = segment_specs(TUMOUR_LABELS, {})
    for index, (mask_dir, t1_dir) in enumerate(_tumour_series(shared_data)):
        mask_image, t1 = load_image(mask_dir), load_image(t1_dir)
        assert np.allclose(mask_image.affine, t1.affine, atol=1e-3)  # the same grid (data README)
        labels = (np.asarray(mask_image) > 0).astype(np.uint8)
        path = tmp_path / f"rt{index}.dcm"
        uids = write_rtstruct(
            labels, np.asarray(t1.affine), t1.meta, specs, path,
            algorithm_name="tumour", algorithm_version="1.0", software_versions="medseg test",
        )
        assert dciodvfy_errors(path) == []
        ds = _check_references(path, t1_dir, t1.meta)
        assert ds.SOPInstanceUID == uids["sop_instance_uid"]
        assert [r.ROIName for r in ds.StructureSetROISequence] == ["tumor"]
        masks = rasterise_rtstruct(path, np.asarray(t1.affine), labels.shape)
        assert dice(masks["tumor"], labels == 1) >= 0.95
        assert np.array_equal(masks["tumor"], labels == 1)


@pytest.mark.needs_data
@pytest.mark.slow
def test_chest_ct_thresholded_mask_round_trip(shared_data: Path, tmp_path: Path) -> None:
    ct_dir = shared_data / "dicom" / "ct-chest"
    ct = load_image(ct_dir)
    hu = np.asarray(ct)
    assert hu.shape == (512, 512, 139)
    in_plane = np.ones((3, 3, 1), dtype=bool)
    body = ndimage.binary_opening(hu > -300, in_plane, iterations=2)  # lungs and airways: holes
    bone = ndimage.binary_opening(hu > 250, in_plane)  # ribs, spine, sternum: islands
    labels = body.astype(np.uint8)
    labels[bone] = 2
    specs = segment_specs({0: "background", 1: "body", 2: "bone"}, {})
    path = tmp_path / "rtstruct.dcm"
    write_rtstruct(
        labels, np.asarray(ct.affine), ct.meta, specs, path,
        algorithm_name="threshold", algorithm_version="1", software_versions="medseg test",
    )
    assert dciodvfy_errors(path) == []
    ds = _check_references(path, ct_dir, ct.meta)
    per_plane = {}
    for contour in ds.ROIContourSequence[0].ContourSequence:
        uid = contour.ContourImageSequence[0].ReferencedSOPInstanceUID
        per_plane[uid] = per_plane.get(uid, 0) + 1
    assert max(per_plane.values()) >= 3  # the body with its holes: several contours on one plane
    masks = rasterise_rtstruct(path, np.asarray(ct.affine), labels.shape)
    for spec in specs:
        assert dice(masks[spec.label], labels == spec.value) >= 0.95
        assert np.array_equal(masks[spec.label], labels == spec.value)


@pytest.mark.needs_data
def test_rtstruct_refuses_what_it_cannot_place(shared_data: Path, tmp_path: Path) -> None:
    series = load_image(shared_data / "dicom" / "hippocampus-crops" / "Study1")
    labels = np.zeros(series.shape[-3:], dtype=np.uint8)
    specs = segment_specs(TUMOUR_LABELS, {})
    kwargs = {"algorithm_name": "a", "algorithm_version": "1", "software_versions": "m"}
    with pytest.raises(DicomError, match="frame of reference|FrameOfReferenceUID"):
        meta = {**series.meta, "frame_of_reference_uid": ""}
        write_rtstruct(labels, np.asarray(series.affine), meta, specs, tmp_path / "a.dcm", **kwargs)
    with pytest.raises(DicomError, match="only be written for DICOM"):
        write_rtstruct(labels, np.asarray(series.affine), {}, specs, tmp_path / "b.dcm", **kwargs)
    with pytest.raises(DicomError, match="slices"):
        write_rtstruct(labels[:, :, 1:], np.asarray(series.affine), series.meta, specs, tmp_path / "c.dcm", **kwargs)
    assert not list(tmp_path.iterdir())
