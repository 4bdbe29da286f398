"""DICOM SEG writer and reader (medseg.io.dicom_seg) on real data: no network involved.

* real third-party SEGs (dcmqi / Slicer: binary, overlapping, label-map with and without pixel
  padding) are mapped onto their source CT grids and compared with the NRRD label maps shipped
  with them, voxel for voxel, in world coordinates;
* our SEG round-trips: read back with highdicom's own API and with ``read_seg`` it equals the
  label map it was written from, and ``dciodvfy`` (dicom3tools) reports no error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from support.dciodvfy import dciodvfy_errors

from medseg.errors import DicomError, GeometryError, SeriesSelectionError
from medseg.io import load_image
from medseg.io.dicom_seg import RESEARCH_ONLY
from medseg.segment import read_seg, resample_labels_nearest, segment_specs, write_seg

pytestmark = pytest.mark.needs_data

HIPPO_LABELS = {0: "background", 1: "anterior hippocampus", 2: "posterior hippocampus"}


@pytest.fixture(scope="module")
def liver_dir(shared_data: Path) -> Path:
    return shared_data / "dicom" / "ct-liver-seg"


def _nrrd_on_grid(nrrd: Path, volume) -> np.ndarray:
    labels = load_image(nrrd)
    return resample_labels_nearest(
        labels.numpy().astype(np.int32), labels.affine.numpy(), volume.affine, volume.masks.shape[1:]
    )


def test_real_liver_seg_maps_onto_its_ct_slices(liver_dir: Path) -> None:
    volume = read_seg(liver_dir / "liver.dcm", source=liver_dir / "ct-3slice")
    assert volume.masks.shape == (1, 512, 512, 3)
    assert volume.segmentation_type == "BINARY"
    assert [s.label for s in volume.segments] == ["Liver"]
    assert volume.segments[0].type.meaning == "Liver"
    assert int(volume.masks.sum()) == 107_098
    reference = _nrrd_on_grid(liver_dir / "liver_seg.nrrd", volume) > 0
    overlap = np.logical_and(reference, volume.masks[0]).sum()
    dice = 2 * overlap / (reference.sum() + volume.masks[0].sum())
    assert dice == 1.0
    # without a source the referenced series is found beside the SEG (recursively)
    again = read_seg(liver_dir / "liver.dcm")
    np.testing.assert_array_equal(again.masks, volume.masks)
    assert again.source.meta["series_uid"] == volume.referenced_series_uids[0]


def test_real_seg_agrees_with_highdicom(liver_dir: Path) -> None:
    import highdicom as hd

    volume = read_seg(liver_dir / "liver.dcm", source=liver_dir / "ct-3slice")
    seg = hd.seg.segread(str(liver_dir / "liver.dcm"))
    uids = volume.source.meta["sop_instance_uids"]
    # dcmqi does not state SpatialLocationsPreserved, which highdicom wants unless told to ignore it
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[1],
        combine_segments=True,
        ignore_spatial_locations=True,
    )
    np.testing.assert_array_equal(np.asarray(frames).transpose(2, 1, 0) > 0, volume.masks[0])


@pytest.mark.parametrize(
    ("seg", "source", "nrrds", "kind"),
    [
        (
            "partial_overlaps.dcm",
            "ct-3slice",
            ["partial_overlaps-1.nrrd", "partial_overlaps-2.nrrd", "partial_overlaps-3.nrrd"],
            "BINARY",
        ),
        ("sparse-labelmap-noppv.dcm", "24x38x3/image", ["sparse_labelmap_noppv_seg.nrrd"], "LABELMAP"),
        ("sparse-labelmap-ppv5.dcm", "24x38x3/image", ["sparse_labelmap_ppv5_seg.nrrd"], "LABELMAP"),
        ("23x38x3/seg/label.seg", "23x38x3/image", ["23x38x3/nrrd/label.nrrd"], "BINARY"),
    ],
)
def test_third_party_segs_match_their_nrrd(
    liver_dir: Path, seg: str, source: str, nrrds: list[str], kind: str
) -> None:
    volume = read_seg(liver_dir / seg, source=liver_dir / source)
    assert volume.segmentation_type == kind
    numbers = [s.number for s in volume.segments]
    checked = set()
    for nrrd in nrrds:
        reference = _nrrd_on_grid(liver_dir / nrrd, volume)
        for value in np.unique(reference):
            if int(value) in numbers:  # other values (e.g. the padding value 5) are no segment
                np.testing.assert_array_equal(
                    volume.mask(int(value)), reference == value, err_msg=f"{nrrd} {value}"
                )
                checked.add(int(value))
    assert checked == set(numbers)
    if kind == "BINARY" and len(numbers) > 1:  # the overlapping segments cannot be one label map
        with pytest.raises(Exception, match="overlap"):
            volume.labelmap()


def test_reader_refuses_wrong_inputs(liver_dir: Path, shared_data: Path) -> None:
    with pytest.raises(DicomError, match="not a DICOM SEG"):
        read_seg(next((liver_dir / "ct-3slice").iterdir()))
    with pytest.raises(SeriesSelectionError, match="not in"):
        read_seg(liver_dir / "liver.dcm", source=liver_dir / "23x38x3" / "image")
    # another series of another frame of reference, given as a loaded image: refused by geometry
    other = load_image(liver_dir / "23x38x3" / "image")
    with pytest.raises(GeometryError, match="frame of reference"):
        read_seg(liver_dir / "liver.dcm", source=other)


def _hippo_source(shared_data: Path) -> Path:
    return shared_data / "dicom" / "hippocampus-crops" / "Study1"


def _synthetic_labels(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    i, j, k = shape
    labels[i // 4 : i // 2, j // 4 : j // 2, 2 : k // 2] = 1
    labels[i // 2 : 3 * i // 4, j // 3 : 2 * j // 3, k // 3 : k - 3] = 2  # touches label 1, some slices empty
    return labels


def test_write_seg_round_trip_and_dciodvfy(shared_data: Path, tmp_path: Path) -> None:
    import highdicom as hd

    source = load_image(_hippo_source(shared_data))
    labels = _synthetic_labels(tuple(source.shape))
    specs = segment_specs(HIPPO_LABELS, {})
    path = tmp_path / "seg.dcm"
    uids = write_seg(
        labels,
        source.meta,
        specs,
        path,
        algorithm_name="test_bundle",
        algorithm_version="1.2.3",
        software_versions="medseg test",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]  # no temporary file left

    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == uids["sop_instance_uid"]
    assert ds.FrameOfReferenceUID == source.meta["frame_of_reference_uid"]
    assert ds.StudyInstanceUID == source.meta["study_uid"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.meta["series_uid"]
    referenced = {
        i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == set(source.meta["sop_instance_uids"])
    assert RESEARCH_ONLY in ds.SeriesDescription.lower() and RESEARCH_ONLY in ds.ContentDescription.lower()
    assert ds.ContentLabel == "RESEARCH_ONLY"
    first = ds.SegmentSequence[0]
    assert first.SegmentLabel == "anterior hippocampus"
    category = first.SegmentedPropertyCategoryCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("91723000", "SCT")
    type_item = first.SegmentedPropertyTypeCodeSequence[0]
    assert (type_item.CodeValue, type_item.CodingSchemeDesignator, type_item.CodeMeaning) == (
        "5366008",
        "SCT",
        "Hippocampus",
    )
    modifier = type_item.SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodeValue, modifier.CodeMeaning) == ("255549009", "Anterior")
    posterior = (
        ds.SegmentSequence[1]
        .SegmentedPropertyTypeCodeSequence[0]
        .SegmentedPropertyTypeModifierCodeSequence[0]
    )
    assert (posterior.CodeValue, posterior.CodeMeaning) == ("255551008", "Posterior")
    algorithm = first.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("test_bundle", "1.2.3")
    # empty slices are omitted, the others all there
    assert int(ds.NumberOfFrames) == sum(
        int((labels[:, :, k] == v).any()) for k in range(labels.shape[2]) for v in (1, 2)
    )

    # highdicom's reader, on the source instances in slice order
    seg = hd.seg.segread(str(path))
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source.meta["sop_instance_uids"],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(np.asarray(frames).transpose(2, 1, 0), labels)
    # medseg's reader, from the SEG alone (source found through the SEG's references)
    volume = read_seg(path, source=_hippo_source(shared_data))
    np.testing.assert_array_equal(volume.labelmap(), labels)
    assert [s.label for s in volume.segments] == ["anterior hippocampus", "posterior hippocampus"]
    assert volume.segments[1].modifiers[0].meaning == "Posterior"

    assert dciodvfy_errors(path) == []


def test_write_seg_for_an_enhanced_multiframe_source(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "dicom" / "ct-liver-seg" / "23x38x3" / "multiframe"
    source = load_image(folder)
    labels = np.zeros(tuple(source.shape), dtype=np.uint8)
    labels[3:15, 5:30, 1:] = 1
    specs = segment_specs({0: "background", 1: "liver"}, {})
    assert specs[0].type.meaning == "Liver" and specs[0].source == "dictionary"
    path = tmp_path / "seg.dcm"
    write_seg(
        labels,
        source.meta,
        specs,
        path,
        algorithm_name="t",
        algorithm_version="1",
        software_versions="medseg",
    )
    volume = read_seg(path, source=folder)
    np.testing.assert_array_equal(volume.labelmap(), labels)
    assert dciodvfy_errors(path) == []


def test_write_seg_refuses_non_dicom(tmp_path: Path, shared_data: Path) -> None:
    image = load_image(sorted((shared_data / "msd-task04-hippocampus" / "imagesTr").glob("*.nii.gz"))[0])
    with pytest.raises(DicomError, match="DICOM input"):
        write_seg(
            np.zeros(tuple(image.shape), np.uint8),
            image.meta,
            segment_specs(HIPPO_LABELS, {}),
            tmp_path / "x.dcm",
            algorithm_name="t",
            algorithm_version="1",
            software_versions="m",
        )
    assert list(tmp_path.iterdir()) == []
