"""Checks on a submitted label (medseg.serve.label.labels) with real hippocampus images, no server."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.serve.label.labels import LabelError, as_image_nifti, check_label, label_suffix

pytestmark = [pytest.mark.needs_data]

ALLOWED = {0, 1, 2}


def _write_nrrd(path: Path, data: np.ndarray, directions: np.ndarray, origin: np.ndarray) -> None:
    """A raw NRRD as Slicer writes a labelmap (first axis fastest, LPS space)."""
    vec = lambda v: "(" + ",".join(f"{x:.10g}" for x in v) + ")"  # noqa: E731
    header = (
        "NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {' '.join(str(s) for s in data.shape)}\n"
        f"space directions: {' '.join(vec(directions[:, i]) for i in range(3))}\n"
        "kinds: domain domain domain\nendian: little\nencoding: raw\n"
        f"space origin: {vec(origin)}\n\n"
    )
    path.write_bytes(header.encode() + np.asfortranarray(data).tobytes(order="F"))


@pytest.fixture()
def case(hippocampus_dir: Path) -> tuple[Path, Path]:
    return (
        hippocampus_dir / "imagesTr" / "hippocampus_003.nii.gz",
        hippocampus_dir / "labelsTr" / "hippocampus_003.nii.gz",
    )


def test_the_image_s_own_label_passes_as_nifti_and_nrrd(case, tmp_path: Path):
    image, label = case
    expected = np.asarray(nib.load(label).dataobj).astype(int)
    np.testing.assert_array_equal(check_label(label, image, ALLOWED), expected)
    # NRRD as 3D Slicer saves a labelmap: same voxels, the image's space directions (LPS)
    img = nib.load(image)
    lps = np.diag([-1.0, -1.0, 1.0]) @ img.affine[:3, :4]
    nrrd_path = tmp_path / "label.seg.nrrd"
    _write_nrrd(nrrd_path, expected.astype(np.uint8), lps[:, :3], lps[:, 3])
    assert label_suffix(nrrd_path.name) == ".nrrd"
    np.testing.assert_array_equal(check_label(nrrd_path, image, ALLOWED), expected)
    # stored as NIfTI with the image's header
    stored = nib.load(as_image_nifti(expected, image, str(tmp_path / "label.nrrd")))
    np.testing.assert_allclose(stored.affine, img.affine)
    np.testing.assert_array_equal(np.asarray(stored.dataobj), expected)


def test_wrong_labels_are_refused_with_a_message(case, hippocampus_dir: Path, tmp_path: Path):
    image, label = case
    img = nib.load(label)
    data = np.asarray(img.dataobj).astype(np.uint8)
    other = hippocampus_dir / "labelsTr" / "hippocampus_004.nii.gz"
    assert nib.load(other).shape != img.shape
    with pytest.raises(LabelError, match="shape") as info:
        check_label(other, image, ALLOWED, name="other.nii.gz")
    assert info.value.status == 422 and "'other.nii.gz'" in str(info.value)

    foreign = data.copy()
    foreign[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(foreign, img.affine), tmp_path / "foreign.nii.gz")
    with pytest.raises(LabelError, match=r"values \[5\]"):
        check_label(tmp_path / "foreign.nii.gz", image, ALLOWED)

    moved = img.affine.copy()
    moved[:3, 3] += 2.0
    nib.save(nib.Nifti1Image(data, moved), tmp_path / "moved.nii.gz")
    with pytest.raises(LabelError, match="elsewhere in space"):
        check_label(tmp_path / "moved.nii.gz", image, ALLOWED)

    nib.save(nib.Nifti1Image(data.astype(np.float32) + 0.5, img.affine), tmp_path / "fractional.nii.gz")
    with pytest.raises(LabelError, match="non-integer"):
        check_label(tmp_path / "fractional.nii.gz", image, ALLOWED)

    (tmp_path / "text.nii.gz").write_text("not an image\n" * 20)
    with pytest.raises(LabelError, match="cannot be read"):
        check_label(tmp_path / "text.nii.gz", image, ALLOWED, name="text.nii.gz")

    with pytest.raises(LabelError) as info:
        check_label(tmp_path / "label.txt", image, ALLOWED)
    assert info.value.status == 415

    with pytest.raises(LabelError, match="DICOMweb datastore only") as info:
        check_label(tmp_path / "label.dcm", image, ALLOWED)
    assert info.value.status == 415
