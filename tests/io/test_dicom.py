"""Refusals of broken DICOM series, each built in tmp_path from a real series.

The base case is the real hippocampus crop series ``dicom/hippocampus-crops/Study1`` (32 MR
slices, 1 mm apart); every test copies it, breaks one thing, and checks that loading refuses
with one line naming the problem -- or, for harmless changes, that it loads identically.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from medseg.errors import DicomError, GeometryError, InputError, SeriesSelectionError
from medseg.io import load_image, scan_series

pytestmark = pytest.mark.needs_data

STUDY1 = "dicom/hippocampus-crops/Study1"
STUDY2 = "dicom/hippocampus-crops/Study2"


def _sorted_files(folder: Path) -> list[Path]:
    """The files of a series sorted along the slice normal, computed here independently of medseg."""
    items = []
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        items.append((float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)), path))
    return [p for _, p in sorted(items)]


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture
def series(shared_data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "series"
    shutil.copytree(shared_data / STUDY1, dst)
    return dst


@pytest.fixture(scope="module")
def reference(shared_data: Path):
    return load_image(shared_data / STUDY1)


def test_reference_series_is_a_regular_stack(reference) -> None:
    assert tuple(reference.shape) == (35, 51, 32)
    assert reference.meta["spatial_shape"].tolist() == [35, 51, 32]
    assert len(reference.meta["files"]) == len(reference.meta["sop_instance_uids"]) == 32


def test_missing_slice(series: Path) -> None:
    files = _sorted_files(series)
    files[15].unlink()
    with pytest.raises(GeometryError) as exc:
        load_image(series)
    message = _one_line(exc)
    assert "missing slice" in message and "gap of 2 mm" in message and "median spacing 1 mm" in message
    assert "slice 15" in message and "slice 16" in message
    # the scan reports the same problem without raising
    (info,) = scan_series(series)
    assert info.slices == 31 and any("missing slice" in p for p in info.problems)


def test_missing_first_or_last_slice_is_undetectable_but_consistent(series: Path, reference) -> None:
    # losing an end slice leaves a regular (shorter) grid: it loads, and the origin moves by one slice
    files = _sorted_files(series)
    files[0].unlink()
    image = load_image(series)
    assert image.shape[-1] == 31
    torch.testing.assert_close(image.affine[:3, 3], reference.affine[:3, 3] + reference.affine[:3, 2])
    torch.testing.assert_close(image, reference[..., 1:])


def test_uneven_spacing(series: Path) -> None:
    target = _sorted_files(series)[10]
    _edit(
        target,
        lambda ds: setattr(ds, "ImagePositionPatient", [0.0, 0.0, float(ds.ImagePositionPatient[2]) + 0.2]),
    )
    with pytest.raises(GeometryError) as exc:
        load_image(series)
    assert "uneven slice spacing" in _one_line(exc)


def test_sub_tolerance_jitter_loads(series: Path, reference) -> None:
    # real series deviate by up to 0.0004 mm: such jitter must not be refused
    target = _sorted_files(series)[10]
    _edit(
        target,
        lambda ds: setattr(ds, "ImagePositionPatient", [0.0, 0.0, float(ds.ImagePositionPatient[2]) + 0.002]),
    )
    image = load_image(series)
    torch.testing.assert_close(image, reference)


@pytest.mark.parametrize("degrees", [2.0, 0.7])
def test_tilt_is_refused(series: Path, degrees: float) -> None:
    # shear along the row direction: slice k moves k * tan(angle) mm along x, the normal stays z
    shift = math.tan(math.radians(degrees))
    for path in series.iterdir():
        _edit(
            path,
            lambda ds: setattr(
                ds,
                "ImagePositionPatient",
                [float(ds.ImagePositionPatient[2]) * shift, 0.0, float(ds.ImagePositionPatient[2])],
            ),
        )
    with pytest.raises(GeometryError) as exc:
        load_image(series)
    message = _one_line(exc)
    assert "off the slice normal" in message and f"{degrees:.2f} degrees" in message


def test_tilt_within_tolerance_loads(series: Path) -> None:
    shift = math.tan(math.radians(0.3))
    for path in series.iterdir():
        _edit(
            path,
            lambda ds: setattr(
                ds,
                "ImagePositionPatient",
                [float(ds.ImagePositionPatient[2]) * shift, 0.0, float(ds.ImagePositionPatient[2])],
            ),
        )
    image = load_image(series)
    # the slice step follows the real positions (first to last), not the normal
    files = _sorted_files(series)
    first = pydicom.dcmread(files[0]).ImagePositionPatient
    last = pydicom.dcmread(files[-1]).ImagePositionPatient
    world_last = image.affine.numpy() @ np.array([0, 0, image.shape[-1] - 1, 1.0])
    np.testing.assert_allclose(world_last[:3], [-float(last[0]), -float(last[1]), float(last[2])], atol=1e-6)
    assert float(first[2]) == pytest.approx(float(image.affine[2, 3]))


def test_shuffled_file_names_load_identically(series: Path, reference, tmp_path: Path) -> None:
    shuffled = tmp_path / "shuffled"
    nested = shuffled / "deeper"
    nested.mkdir(parents=True)
    rng = np.random.default_rng(0)
    files = sorted(series.iterdir())
    for index, new in zip(rng.permutation(len(files)), range(len(files)), strict=True):
        target = (nested if new % 2 else shuffled) / f"img{new:03d}"  # no extension, two folders
        shutil.copy(files[index], target)
    # also scramble InstanceNumber: sorting must not depend on it
    for path in shuffled.rglob("img*"):
        _edit(path, lambda ds: setattr(ds, "InstanceNumber", int(rng.integers(1, 1000))))
    image = load_image(shuffled)
    torch.testing.assert_close(image, reference)
    torch.testing.assert_close(image.affine, reference.affine)
    assert image.meta["sop_instance_uids"] == reference.meta["sop_instance_uids"]


@pytest.mark.parametrize(
    "keep", [0.6, 0.99, 300 / 4752, 1000 / 4752, 1180 / 4752], ids=lambda k: f"keep{k:.3f}"
)
def test_truncated_file_is_corrupt(series: Path, keep: float) -> None:
    target = _sorted_files(series)[7]
    data = target.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DicomError) as exc:
        load_image(series)
    message = _one_line(exc)
    assert str(target) in message and "corrupt" in message


def test_short_pixel_data_is_corrupt(series: Path) -> None:
    target = _sorted_files(series)[3]
    _edit(target, lambda ds: setattr(ds, "PixelData", ds.PixelData[:-200]))
    with pytest.raises(DicomError) as exc:
        load_image(series)
    assert str(target) in _one_line(exc)


def test_undecodable_pixel_data_is_corrupt(series: Path) -> None:
    # claim JPEG baseline while the pixel data is raw: neither pydicom nor SimpleITK can decode it
    target = _sorted_files(series)[3]

    def claim_jpeg(ds):
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])

    _edit(target, claim_jpeg)
    with pytest.raises(DicomError) as exc:
        load_image(series)
    message = _one_line(exc)
    assert str(target) in message and "cannot be decoded" in message


def test_two_series_need_a_choice(shared_data: Path, tmp_path: Path) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(shared_data / STUDY1, mixed / "a")
    shutil.copytree(shared_data / STUDY2, mixed / "b")
    one = load_image(shared_data / STUDY1)
    two = load_image(shared_data / STUDY2)
    with pytest.raises(SeriesSelectionError) as exc:
        load_image(mixed)
    message = _one_line(exc)
    assert one.meta["series_uid"] in message and two.meta["series_uid"] in message
    assert "32 slices" in message and "35 slices" in message
    for expected in (one, two):
        chosen = load_image(mixed, series_uid=expected.meta["series_uid"])
        torch.testing.assert_close(chosen, expected)
        torch.testing.assert_close(chosen.affine, expected.affine)
    with pytest.raises(SeriesSelectionError) as exc:
        load_image(mixed, series_uid="1.2.3.4")
    message = _one_line(exc)
    assert "1.2.3.4" in message and one.meta["series_uid"] in message and two.meta["series_uid"] in message


def test_duplicate_file_is_counted_once(series: Path, reference) -> None:
    original = _sorted_files(series)[5]
    shutil.copy(original, series / "copy-of-a-slice.dcm")
    (info,) = scan_series(series)
    assert info.slices == 32 and len(info.files) == 32
    assert any("copy-of-a-slice.dcm duplicates" in p and "identical copy" in p for p in info.problems)
    image = load_image(series)
    torch.testing.assert_close(image, reference)


def test_duplicate_uid_with_other_content_is_refused(series: Path) -> None:
    files = _sorted_files(series)
    uid = pydicom.dcmread(files[5]).SOPInstanceUID
    _edit(files[6], lambda ds: setattr(ds, "SOPInstanceUID", uid))
    with pytest.raises(DicomError) as exc:
        load_image(series)
    message = _one_line(exc)
    assert "duplicates the SOPInstanceUID" in message and "different content" in message


def test_repeated_position_is_refused(series: Path) -> None:
    files = _sorted_files(series)
    z = float(pydicom.dcmread(files[8]).ImagePositionPatient[2])
    _edit(files[9], lambda ds: setattr(ds, "ImagePositionPatient", [0.0, 0.0, z]))
    with pytest.raises(GeometryError) as exc:
        load_image(series)
    assert "repeated slice position" in _one_line(exc)


def test_mixed_image_sizes(series: Path) -> None:
    target = _sorted_files(series)[12]

    def crop(ds):
        pixels = ds.pixel_array[:-1, :-2].copy()
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()

    _edit(target, crop)
    with pytest.raises(DicomError) as exc:
        load_image(series)
    message = _one_line(exc)
    assert "mixes image sizes" in message and "35x51 (31 slices)" in message and str(target) in message


def test_mixed_orientations(series: Path) -> None:
    target = _sorted_files(series)[12]
    c, s = math.cos(math.radians(5)), math.sin(math.radians(5))
    _edit(target, lambda ds: setattr(ds, "ImageOrientationPatient", [c, s, 0.0, -s, c, 0.0]))
    with pytest.raises(GeometryError) as exc:
        load_image(series)
    assert "mixes slice orientations" in _one_line(exc)


def test_non_dicom_files_are_skipped(series: Path, shared_data: Path, reference) -> None:
    shutil.copy(shared_data / "dicom/ct-liver-seg/LICENSE", series / "LICENSE")
    shutil.copy(shared_data / "dicom/ct-liver-seg/liver_seg.nrrd", series / "labels.dcm")  # lying extension
    for png in list((shared_data / "dicom/ct-liver-seg/23x38x3/screenshots").iterdir())[:1]:
        shutil.copy(png, series / png.name)
    (info,) = scan_series(series)
    assert info.slices == 32 and not info.problems
    torch.testing.assert_close(load_image(series), reference)


def test_segmentation_only_folder(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "seg"
    folder.mkdir()
    shutil.copy(shared_data / "dicom/ct-liver-seg/liver.dcm", folder / "liver.dcm")
    with pytest.raises(DicomError) as exc:
        load_image(folder)
    message = _one_line(exc)
    assert "no image series" in message and "SEG" in message
    (info,) = scan_series(folder)
    assert info.modality == "SEG" and info.image is False
    with pytest.raises(DicomError, match="not an image series"):
        load_image(folder, series_uid=info.uid)
    with pytest.raises(DicomError, match="no image series"):
        load_image(folder / "liver.dcm")


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        load_image(tmp_path)
    assert "is empty" in _one_line(exc)
    with pytest.raises(InputError, match="is empty"):
        scan_series(tmp_path)


def test_folder_without_dicom(shared_data: Path, tmp_path: Path) -> None:
    shutil.copy(shared_data / "dicom/ct-liver-seg/LICENSE", tmp_path / "LICENSE")
    with pytest.raises(InputError) as exc:
        load_image(tmp_path)
    assert "no DICOM file" in _one_line(exc)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "nowhere")


def _sitk_ras_affine(files: list[str]) -> np.ndarray:
    import SimpleITK as sitk

    image = sitk.ReadImage(files)
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


def test_anisotropic_pixel_spacing_follows_dicom_order(series: Path) -> None:
    # PixelSpacing = [row spacing, column spacing]: I (along a row) gets [1], J (down a column) gets [0]
    for path in series.iterdir():
        _edit(path, lambda ds: setattr(ds, "PixelSpacing", [2.0, 0.5]))
    image = load_image(series)
    np.testing.assert_allclose(image.pixdim.numpy(), [0.5, 2.0, 1.0])
    itk = _sitk_ras_affine(image.meta["files"])  # ITK reads the same files in our order
    np.testing.assert_allclose(image.affine.numpy(), itk, atol=1e-6)


def test_sagittal_series_matches_simpleitk(series: Path) -> None:
    # turn the real axial crop into a sagittal one: rows along -z, slices advancing towards the right (-x)
    for path in series.iterdir():

        def to_sagittal(ds):
            k = float(ds.ImagePositionPatient[2])
            ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
            ds.ImagePositionPatient = [-k * 1.5 + 20.0, -30.0, 40.0]

        _edit(path, to_sagittal)
    image = load_image(series)
    (info,) = scan_series(series)
    assert info.orientation == "PIR" and info.spacing == pytest.approx([1.0, 1.0, 1.5])
    import SimpleITK as sitk

    names = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(series)))  # ITK sorts on its own
    np.testing.assert_allclose(image.affine.numpy(), _sitk_ras_affine(names), atol=1e-6)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(names)).transpose(2, 1, 0)
    np.testing.assert_array_equal(image.numpy(), reference)


def test_single_slice_uses_spacing_between_slices(shared_data: Path, tmp_path: Path) -> None:
    # a TCIA slice: SliceThickness 5 mm, SpacingBetweenSlices 6.5 mm; a single file loads on its own too
    folder = next((shared_data / "tcia-brain-tumor/PGBM-008").glob("*/*T1post*"))
    path = sorted(folder.iterdir())[0]
    shutil.copy(path, tmp_path / "one.dcm")
    for source in (tmp_path, tmp_path / "one.dcm"):
        image = load_image(source)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        assert image.shape[-1] == 1
        np.testing.assert_allclose(image.affine.numpy()[:3, 2], normal * [-1, -1, 1] * 6.5, atol=1e-6)
