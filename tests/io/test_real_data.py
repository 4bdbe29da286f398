"""Every real series in the shared data loads, with geometry checked against independent truths.

Truths used here do not come from medseg: the DICOM headers read with pydicom in the test,
SimpleITK's own series reader, the NRRD header text, nibabel, and anatomy (the TCIA tumour
mask lies on bright FLAIR signal, the liver label on liver-density CT).
"""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from medseg import paths
from medseg.errors import GeometryError
from medseg.io import load_image, read_dicom, save_nifti, scan_series
from medseg.io.dicom import scan_folder

pytestmark = pytest.mark.needs_data


def _data_dir() -> Path:
    # needed here at collection time for the test ids
    return paths.data_dir().resolve()


DATA = _data_dir()


def _image_series() -> list:
    if not DATA.is_dir():
        return []
    params = []
    for info in scan_folder(DATA).infos:
        if not info.image:
            continue
        folder = Path(info.files[0]).parent
        test_id = f"{folder.relative_to(DATA)}:{info.description or info.modality}"
        params.append(pytest.param(str(folder), info.uid, id=test_id))
    return params


IMAGE_SERIES = _image_series()
TCIA_STUDIES = (
    sorted(p for p in DATA.glob("tcia-brain-tumor/PGBM-*/*") if p.is_dir()) if DATA.is_dir() else []
)


def _headers(files: list[str]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def test_data_holds_the_documented_series(shared_data: Path) -> None:
    # README: 3 hippocampus crops, 1 brain MR, 1 chest CT, ct-liver-seg: 3 CT + 2 multi-frame CT + 5 SEG,
    # TCIA: 6 studies x (T1post, FLAIRreg, MaskTumor)
    assert len(IMAGE_SERIES) == 3 + 1 + 1 + 3 + 2 + 6 * 3
    liver = scan_series(shared_data / "dicom/ct-liver-seg")
    assert len(liver) == 10
    assert sorted(i.modality for i in liver if not i.image) == ["SEG"] * 5
    assert sum(i.image for i in liver) == 5
    assert not any(i.problems for i in scan_series(shared_data) if i.image)


@pytest.mark.parametrize(("folder", "uid"), IMAGE_SERIES)
def test_every_real_series_loads(folder: str, uid: str) -> None:
    image = load_image(folder, series_uid=uid)
    meta = image.meta
    files, uids = meta["files"], meta["sop_instance_uids"]
    assert meta["series_uid"] == uid and meta["space"] == "RAS"
    assert image.dtype == torch.float32 and image.ndim == 3 and torch.isfinite(image).all()
    headers = _headers(files)
    first = headers[0]
    assert meta["modality"] == first.Modality and meta["study_uid"] == first.StudyInstanceUID
    assert meta["frame_of_reference_uid"] == first.FrameOfReferenceUID
    assert not any(k in meta for k in ("PatientName", "PatientID", "PatientBirthDate", "patient_name"))
    if (
        len(files) == 1 and int(first.get("NumberOfFrames", 1)) > 1
    ):  # multi-frame: one file, one uid per frame
        assert uids == [first.SOPInstanceUID] * image.shape[-1]
        assert sorted(meta["frame_numbers"]) == list(range(1, image.shape[-1] + 1))
    else:
        assert len(files) == image.shape[-1] and uids == [h.SOPInstanceUID for h in headers]
        assert tuple(image.shape) == (int(first.Columns), int(first.Rows), len(files))
        # voxel (0, 0, k) sits at ImagePositionPatient of the k-th file, LPS -> RAS
        affine = image.affine.numpy()
        for k, ds in enumerate(headers):
            lps = np.asarray(ds.ImagePositionPatient, dtype=float)
            np.testing.assert_allclose(affine @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-3)
        spacing = np.asarray(first.PixelSpacing, dtype=float)
        np.testing.assert_allclose(np.linalg.norm(affine[:3, :2], axis=0), spacing[::-1], rtol=1e-6)
    # the fallback decoder (SimpleITK / GDCM) gives the same voxels, and GDCM's rescale agrees with ours
    other, _ = read_dicom(folder, series_uid=uid, decoder="simpleitk")
    np.testing.assert_array_equal(other.astype(np.float32), image.numpy())


def _pick(*needles: str) -> list:
    return [p for p in IMAGE_SERIES if any(n in p.id for n in needles)]


@pytest.mark.parametrize(
    ("folder", "uid"),
    _pick("brain-mr", "ct-3slice", "PGBM-001/11-19-1991-FH-HEADBrain_Protocols-40993/11-T1post"),
)
def test_geometry_matches_simpleitk_series_reader(folder: str, uid: str) -> None:
    # ITK sorts the folder itself (GDCM IPP sorter) and builds an orthonormal direction
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)
    reference = sitk.ReadImage(names)
    expected_affine = _sitk_affine(reference)
    image = load_image(folder, series_uid=uid)
    affine = image.affine.numpy()
    np.testing.assert_allclose(affine[:, [0, 1, 3]], expected_affine[:, [0, 1, 3]], atol=1e-4)
    np.testing.assert_allclose(affine[:, 2], expected_affine[:, 2], atol=2e-3)  # step vs normal * spacing
    np.testing.assert_array_equal(image.numpy(), sitk.GetArrayFromImage(reference).transpose(2, 1, 0))


def _sitk_affine(image: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine


@pytest.mark.parametrize("size", ["23x38x3", "24x38x3"])
def test_multiframe_matches_single_frame_series(shared_data: Path, size: str) -> None:
    folder = shared_data / "dicom/ct-liver-seg" / size
    multi = load_image(folder / "multiframe/mf.dcm")
    single = load_image(folder / "image")
    assert multi.meta["series_uid"] != single.meta["series_uid"]
    assert multi.shape == single.shape
    torch.testing.assert_close(multi, single, rtol=0, atol=0)
    torch.testing.assert_close(multi.affine, single.affine, rtol=0, atol=1e-6)
    # geometry comes from the per-frame functional groups: frame k sits at its PlanePositionSequence
    ds = pydicom.dcmread(folder / "multiframe/mf.dcm", stop_before_pixels=True)
    assert "ImagePositionPatient" not in ds
    for k, number in enumerate(multi.meta["frame_numbers"]):
        lps = np.asarray(
            ds.PerFrameFunctionalGroupsSequence[number - 1].PlanePositionSequence[0].ImagePositionPatient,
            float,
        )
        np.testing.assert_allclose(
            multi.affine.numpy() @ [0, 0, k, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-6
        )
    # and it is the grid of the NRRD label exported beside it
    label = load_image(folder / "nrrd/label.nrrd")
    torch.testing.assert_close(label.affine, multi.affine, rtol=0, atol=1e-4)


def _series_by_description(study: Path) -> dict[str, str]:
    return {info.description: info.uid for info in scan_series(study)}


@pytest.mark.parametrize("study", TCIA_STUDIES, ids=[f"{p.parent.name}/{p.name}" for p in TCIA_STUDIES])
def test_tcia_series_share_one_grid_and_mask_lies_on_flair_signal(study: Path) -> None:
    uids = _series_by_description(study)
    assert sorted(uids) == ["FLAIR_reg", "Mask_Tumor", "T1post"]
    t1, flair, mask = (load_image(study, series_uid=uids[d]) for d in ("T1post", "FLAIR_reg", "Mask_Tumor"))
    assert t1.shape == flair.shape == mask.shape
    for other in (flair, mask):
        torch.testing.assert_close(other.affine, t1.affine, rtol=0, atol=1e-3)
    m = mask.numpy() > 0
    assert set(np.unique(mask.numpy())) == {0.0, 1.0} and m.sum() > 100
    f = flair.numpy()
    head = f > 0.1 * np.percentile(f, 99)
    # the tumour (oedema) is bright on FLAIR: clearly brighter than the rest of the head ...
    assert np.median(f[m]) > 1.1 * np.median(f[head & ~m])
    # ... and than the mirrored region across the I axis (left-right): a flipped mask would fail this
    mirrored = m[::-1]
    assert not (m & mirrored).any()
    assert f[m].mean() > 1.05 * f[mirrored & head].mean()


def test_dicom_to_nifti_keeps_world_coordinates(shared_data: Path, tmp_path: Path) -> None:
    study = sorted((shared_data / "tcia-brain-tumor/PGBM-001").iterdir())[0]
    folder = next(study.glob("*T1post*"))
    image = load_image(folder, dtype=None)
    out = save_nifti(image, tmp_path / "t1.nii.gz")
    assert not [p for p in tmp_path.iterdir() if p.name != "t1.nii.gz"]  # no temporary file left
    nifti = nib.load(out)
    assert nifti.header["sform_code"] == 1 and nifti.header["qform_code"] == 1
    np.testing.assert_array_equal(np.asanyarray(nifti.dataobj), image.numpy())

    # truth from the headers, computed here: sort by position on the normal, take first and last
    headers = _headers([str(p) for p in folder.iterdir()])
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    headers.sort(key=lambda ds: float(np.dot(np.asarray(ds.ImagePositionPatient, dtype=float), normal)))
    first = np.asarray(headers[0].ImagePositionPatient, dtype=float)
    last = np.asarray(headers[-1].ImagePositionPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in headers[0].PixelSpacing)
    ni, nj, nk = nifti.shape
    corners_lps = {
        (0, 0, 0): first,
        (0, 0, nk - 1): last,
        (ni - 1, 0, 0): first + iop[:3] * column_spacing * (ni - 1),
        (0, nj - 1, 0): first + iop[3:] * row_spacing * (nj - 1),
        (ni - 1, nj - 1, nk - 1): last
        + iop[:3] * column_spacing * (ni - 1)
        + iop[3:] * row_spacing * (nj - 1),
    }
    to_ras = np.array([-1.0, -1.0, 1.0])
    for ijk, lps in corners_lps.items():
        np.testing.assert_allclose(nib.affines.apply_affine(nifti.affine, ijk), lps * to_ras, atol=1e-3)
        # the qform (rigid + zooms) agrees too, these slices are not sheared
        np.testing.assert_allclose(nib.affines.apply_affine(nifti.get_qform(), ijk), lps * to_ras, atol=1e-2)
    # reading the NIfTI back gives the same MetaTensor geometry
    back = load_image(out)
    torch.testing.assert_close(back.affine, image.affine, rtol=0, atol=1e-5)


def test_ct_slices_match_the_nrrd_labels_made_on_them(shared_data: Path) -> None:
    folder = shared_data / "dicom/ct-liver-seg"
    ct = load_image(folder / "ct-3slice")
    for name, low, high in (("liver_seg", 0, 120), ("spine_seg", 150, 1500)):
        label = load_image(folder / f"{name}.nrrd")
        assert label.shape == ct.shape
        torch.testing.assert_close(label.affine, ct.affine, rtol=0, atol=1e-4)
        inside = ct.numpy()[label.numpy() > 0]
        assert inside.size > 100 and low < float(inside.mean()) < high  # liver ~40 HU, bone several hundred


def _nrrd_header(path: Path) -> dict[str, str]:
    header = {}
    with open(path, "rb") as fp:
        for raw in fp:
            line = raw.decode("latin-1").rstrip("\n")
            if not line:
                break
            if ": " in line and not line.startswith("#"):
                key, value = line.split(": ", 1)
                header[key.strip()] = value.strip()
    return header


NRRD_FILES = sorted([*DATA.glob("nrrd/**/*.nrrd"), *DATA.glob("dicom/**/*.nrrd")]) if DATA.is_dir() else []


@pytest.mark.parametrize("path", NRRD_FILES, ids=[str(p.relative_to(DATA)) for p in NRRD_FILES])
def test_nrrd_affine_matches_its_header(path: Path) -> None:
    header = _nrrd_header(path)
    assert header["space"] == "left-posterior-superior"
    directions = np.array(
        [[float(v) for v in vec.split(",")] for vec in re.findall(r"\(([^)]*)\)", header["space directions"])]
    )
    origin = np.array([float(v) for v in header["space origin"].strip("()").split(",")])
    sizes = [int(v) for v in header["sizes"].split()]
    image = load_image(path)
    assert list(image.shape) == sizes
    expected = np.eye(4)
    expected[:3, :3] = directions.T  # column i: the world step of voxel axis i
    expected[:3, 3] = origin
    expected[:2] *= -1  # LPS -> RAS
    np.testing.assert_allclose(image.affine.numpy(), expected, atol=1e-6)
    assert image.meta["space"] == "RAS" and np.isnan(image.meta["original_channel_dim"])


def test_nifti_matches_nibabel(hippocampus_dir: Path) -> None:
    for path in sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[:3]:
        image = load_image(path)
        reference = nib.load(path)
        np.testing.assert_array_equal(image.numpy(), reference.get_fdata(dtype=np.float32))
        np.testing.assert_allclose(image.affine.numpy(), reference.affine)
        np.testing.assert_allclose(image.meta["original_affine"], reference.affine)
        assert image.meta["spatial_shape"].tolist() == list(reference.shape)
        assert image.meta["filename_or_obj"] == str(path)


def _real_nifti(hippocampus_dir: Path) -> Path:
    return sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[0]


def test_nifti_with_nan_is_refused(hippocampus_dir: Path, tmp_path: Path) -> None:
    real = nib.load(_real_nifti(hippocampus_dir))
    data = real.get_fdata(dtype=np.float32)
    data[10, 11, 12] = np.nan
    bad = tmp_path / "nan.nii.gz"
    header = real.header.copy()
    header.set_data_dtype(np.float32)  # some hippocampus images are stored as uint8, which has no NaN
    nib.save(nib.Nifti1Image(data, real.affine, header), bad)
    with pytest.raises(GeometryError) as exc:
        load_image(bad)
    message = str(exc.value)
    assert "\n" not in message and "NaN/inf" in message and "(10, 11, 12)" in message and str(bad) in message


def test_nrrd_with_inf_is_refused(shared_data: Path, tmp_path: Path) -> None:
    real = sitk.ReadImage(str(shared_data / "nrrd/pyradiomics/breast1_image.nrrd"), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(real)
    array[3, 4, 5] = np.inf
    bad_image = sitk.GetImageFromArray(array)
    bad_image.CopyInformation(real)
    bad = tmp_path / "inf.nrrd"
    sitk.WriteImage(bad_image, str(bad))
    with pytest.raises(GeometryError, match=r"NaN/inf voxel.*\(5, 4, 3\)"):
        load_image(bad)


def test_save_nifti_roundtrip_and_atomic_failure(hippocampus_dir: Path, tmp_path: Path, monkeypatch) -> None:
    image = load_image(_real_nifti(hippocampus_dir))
    out = tmp_path / "copy.nii"
    save_nifti(image, out)
    back = load_image(out)
    torch.testing.assert_close(back, image)
    torch.testing.assert_close(back.affine, image.affine)
    before = out.read_bytes()

    def broken_save(img, filename):  # write half a file, then fail like a full disk would
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError):
        save_nifti(image, out)
    with pytest.raises(OSError):
        save_nifti(image, tmp_path / "new.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.nii"]  # nothing partial, old file intact
    assert out.read_bytes() == before
