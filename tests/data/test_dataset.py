"""Dataset readers and validation (medseg.data.dataset) on copies of real cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.dataset import DatasetError, open_dataset, read_case
from medseg.errors import InputError

pytestmark = pytest.mark.needs_data


def _rewrite(path: Path, array: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj) if array is None else array
    new = nib.Nifti1Image(data, img.affine if affine is None else affine)
    nib.save(new, str(path))


def _first_label(root: Path) -> Path:
    return sorted((root / "labelsTr").iterdir())[0]


def _first_image(root: Path) -> Path:
    return sorted((root / "imagesTr").iterdir())[0]


def _read_all(root: Path) -> None:
    spec = open_dataset(root)
    for case in spec.cases:
        read_case(spec, case)


def test_msd_layout(msd_copy):
    spec = open_dataset(msd_copy())
    assert spec.layout == "msd" and spec.spatial_dims == 3
    assert spec.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert spec.channels == {0: "MRI"}
    assert [c.case_id for c in spec.cases] == sorted(c.case_id for c in spec.cases)
    data = read_case(spec, spec.cases[0])
    assert data.image.ndim == 4 and data.image.shape[0] == 1 and data.image.dtype == np.float32
    assert data.label.shape == data.image.shape[1:] and data.spacing == (1.0, 1.0, 1.0)


def test_msd_4d_channels_last(msd_copy):
    root = msd_copy()
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "MRI", "1": "MRI copy"}
    (root / "dataset.json").write_text(json.dumps(meta))
    for path in (root / "imagesTr").iterdir():
        data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
        _rewrite(path, np.stack([data, 2 * data], axis=-1))
    spec = open_dataset(root)
    case = read_case(spec, spec.cases[0])
    assert case.image.shape[0] == 2
    np.testing.assert_allclose(case.image[1], 2 * case.image[0])


def test_nnunet_layout_matches_msd(msd_copy, nnunet_copy):
    msd, nnunet = open_dataset(msd_copy()), open_dataset(nnunet_copy())
    assert nnunet.layout == "nnunet" and nnunet.labels == msd.labels
    assert [c.case_id for c in nnunet.cases] == [c.case_id for c in msd.cases]
    a, b = read_case(msd, msd.cases[1]), read_case(nnunet, nnunet.cases[1])
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)


def test_rgb_png(kvasir_png):
    spec = open_dataset(kvasir_png)
    assert spec.spatial_dims == 2 and spec.is_rgb and len(spec.cases) == 5
    shapes = set()
    for case in spec.cases:
        data = read_case(spec, case)
        assert data.image.shape[0] == 3 and data.label.shape == data.image.shape[1:]
        assert set(np.unique(data.label)) <= {0, 1}
        shapes.add(data.shape)
    assert len(shapes) > 1  # the photos differ in size


def test_whole_number_float_labels_accepted(msd_copy):
    root = msd_copy()
    label = _first_label(root)
    _rewrite(label, np.asanyarray(nib.load(str(label)).dataobj).astype(np.float32))
    _read_all(root)


def _expect(root: Path, *words: str) -> None:
    with pytest.raises(DatasetError) as info:
        _read_all(root)
    message = str(info.value)
    assert isinstance(info.value, InputError) and "\n" not in message
    for word in words:
        assert word in message, message


def test_missing_listed_file(msd_copy):
    root = msd_copy()
    label = _first_label(root)
    label.unlink()
    _expect(root, label.name.removesuffix(".nii.gz"), "missing", "restore")


def test_missing_channel_file_nnunet(nnunet_copy):
    root = nnunet_copy()
    image = _first_image(root)
    image.unlink()
    _expect(root, image.name.removesuffix("_0000.nii.gz"), "missing")


def test_grid_shape_differs(msd_copy):
    root = msd_copy()
    label = _first_label(root)
    _rewrite(label, np.asanyarray(nib.load(str(label)).dataobj)[:-2])
    _expect(root, label.name.removesuffix(".nii.gz"), "shape", "resample")


def test_grid_affine_differs(msd_copy):
    root = msd_copy()
    label = _first_label(root)
    affine = nib.load(str(label)).affine.copy()
    affine[0, 3] += 2.0
    _rewrite(label, affine=affine)
    _expect(root, label.name.removesuffix(".nii.gz"), "affines differ")


def test_undeclared_label_value(msd_copy):
    root = msd_copy()
    label = _first_label(root)
    data = np.asanyarray(nib.load(str(label)).dataobj).copy()
    data[0, 0, 0] = 5
    _rewrite(label, data)
    _expect(root, label.name.removesuffix(".nii.gz"), "[5]", "declare")


def test_non_integer_label(msd_copy):
    root = msd_copy()
    label = _first_label(root)
    data = np.asanyarray(nib.load(str(label)).dataobj).astype(np.float32)
    data[0, 0, 0] = 0.5
    _rewrite(label, data)
    _expect(root, label.name.removesuffix(".nii.gz"), "non-integer", "nearest")


def test_channel_count_differs(msd_copy):
    root = msd_copy()
    image = sorted((root / "imagesTr").iterdir())[2]
    data = np.asanyarray(nib.load(str(image)).dataobj).astype(np.float32)
    _rewrite(image, np.stack([data, data], axis=-1))
    _expect(root, image.name.removesuffix(".nii.gz"), "2 image channel", "declares 1")


def test_fewer_cases_than_folds(msd_copy):
    _expect(msd_copy(count=4), "4 labelled case", "5 folds")


def test_nan_voxels(msd_copy):
    root = msd_copy()
    image = _first_image(root)
    data = np.asanyarray(nib.load(str(image)).dataobj).astype(np.float32)
    data[1, 1, 1] = np.nan
    _rewrite(image, data)
    _expect(root, image.name.removesuffix(".nii.gz"), "NaN")


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no dataset.json"):
        open_dataset(tmp_path)


def test_grey_png(hippocampus_png):
    spec = open_dataset(hippocampus_png)
    assert spec.spatial_dims == 2 and not spec.is_rgb and spec.num_channels == 1
    data = read_case(spec, spec.cases[0])
    assert data.image.shape[0] == 1 and data.label.shape == data.image.shape[1:]
    assert set(np.unique(data.label)) <= {0, 1, 2}


def test_rgb_png_as_grey_channel_count(kvasir_png):
    meta = json.loads((kvasir_png / "dataset.json").read_text())
    meta["channel_names"] = {"0": "photo"}
    (kvasir_png / "dataset.json").write_text(json.dumps(meta))
    _expect(kvasir_png, "3 image channel", "declares 1")


def test_jpeg_images_with_png_labels(kvasir_jpeg):
    """nnU-Net layout with file_ending .jpg: RGB JPEG images, PNG labels (JPEG would blur class indices)."""
    root = kvasir_jpeg(count=6)
    spec = open_dataset(root)
    assert spec.file_ending == ".jpg" and spec.spatial_dims == 2 and spec.is_rgb and len(spec.cases) == 6
    assert all(c.images[0].name.endswith("_0000.jpg") and c.label.suffix == ".png" for c in spec.cases)
    shapes = set()
    for case in spec.cases:
        data = read_case(spec, case)
        assert data.image.shape[0] == 3 and data.label.shape == data.image.shape[1:]
        assert set(np.unique(data.label)) == {0, 1}
        shapes.add(data.shape)
    assert len(shapes) > 1  # the photos differ in size
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 7}))
    with pytest.raises(DatasetError, match="'.png' labels"):
        open_dataset(root)
