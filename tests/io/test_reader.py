"""MedsegReader inside MONAI pipelines: LoadImaged by name, EnsureChannelFirstd, Orientationd, Spacingd, Invertd."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImage,
    LoadImaged,
    Orientationd,
    Spacingd,
)

from medseg.io import MedsegReader, load_image, scan_series

pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def study(shared_data: Path) -> Path:
    return sorted((shared_data / "tcia-brain-tumor/PGBM-001").iterdir())[0]


@pytest.fixture(scope="module")
def t1_folder(study: Path) -> Path:
    return next(study.glob("*T1post*"))


@pytest.fixture(scope="module")
def nifti_file(hippocampus_dir: Path) -> Path:
    return sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[0]


def _pipeline(reader) -> Compose:
    return Compose(
        [
            LoadImaged(keys="image", reader=reader),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
        ]
    )


def test_reader_is_found_by_dotted_name() -> None:
    loader = LoadImaged(keys="image", reader="medseg.io.MedsegReader")
    assert isinstance(loader._loader.readers[-1], MedsegReader)  # the user reader is tried first


def _assert_same_world_samples(original: MetaTensor, oriented: MetaTensor, points: int = 200) -> None:
    """Voxels keep their value at their world position through a reorientation."""
    rng = np.random.default_rng(0)
    shape = np.array(original.shape[-3:])
    ijk = rng.integers(0, shape, size=(points, 3))
    world = nib.affines.apply_affine(original.affine.numpy(), ijk)
    back = nib.affines.apply_affine(np.linalg.inv(oriented.affine.numpy()), world)
    np.testing.assert_allclose(back, np.round(back), atol=1e-4)  # a pure axis permutation / flip
    back = np.round(back).astype(int)
    a = original.numpy().reshape(original.shape[-3:])[tuple(ijk.T)]
    b = oriented.numpy()[0][tuple(back.T)]
    np.testing.assert_array_equal(a, b)


def test_dicom_folder_through_monai_pipeline(t1_folder: Path) -> None:
    out = _pipeline("medseg.io.MedsegReader")({"image": str(t1_folder)})["image"]
    direct = load_image(t1_folder)
    assert out.shape == (1, *direct.shape)
    assert out.meta["series_uid"] == direct.meta["series_uid"]
    torch.testing.assert_close(out.meta["original_affine"], direct.meta["original_affine"])
    # oriented to RAS: the axes point (mostly) right, anterior, superior
    rotation = out.affine.numpy()[:3, :3]
    assert (np.argmax(np.abs(rotation), axis=0) == [0, 1, 2]).all() and (np.diag(rotation) > 0).all()
    assert nib.orientations.aff2axcodes(out.affine.numpy()) == ("R", "A", "S")
    _assert_same_world_samples(direct, out)


def test_nifti_through_monai_pipeline_matches_nibabel_reader(nifti_file: Path) -> None:
    ours = _pipeline("medseg.io.MedsegReader")({"image": str(nifti_file)})["image"]
    monai = _pipeline("NibabelReader")({"image": str(nifti_file)})["image"]
    torch.testing.assert_close(ours.as_tensor(), monai.as_tensor())
    torch.testing.assert_close(ours.affine, monai.affine)
    _assert_same_world_samples(load_image(nifti_file), ours)


def test_series_uid_through_reader_instance(study: Path) -> None:
    uids = {info.description: info.uid for info in scan_series(study)}
    for description, uid in uids.items():
        image = LoadImage(reader=MedsegReader(series_uid=uid), image_only=True)(str(study))
        assert image.meta["series_uid"] == uid and image.meta["series_description"] == description
    # the name form passes LoadImaged's extra arguments to the reader
    flair = LoadImaged(keys="image", reader="medseg.io.MedsegReader", series_uid=uids["FLAIR_reg"])(
        {"image": str(study)}
    )["image"]
    assert flair.meta["series_description"] == "FLAIR_reg"
    # without a choice MONAI wraps our refusal; its one-line message is kept
    with pytest.raises(RuntimeError, match="holds 3 image series"):
        LoadImage(reader=MedsegReader(), image_only=True)(str(study))


def test_several_inputs_are_stacked_as_channels(study: Path) -> None:
    folders = [str(next(study.glob(f"*{name}*"))) for name in ("T1post", "FLAIRreg")]
    stacked = LoadImage(reader=MedsegReader(), image_only=True, ensure_channel_first=True)(folders)
    t1, flair = (load_image(f) for f in folders)
    assert stacked.shape == (2, *t1.shape)
    torch.testing.assert_close(stacked[0], t1.as_tensor())
    torch.testing.assert_close(stacked[1], flair.as_tensor())


def test_spacing_and_invert_restore_the_original_grid(study: Path) -> None:
    mask_folder = str(next(study.glob("*MaskTumor*")))
    preprocess = Compose(
        [
            LoadImaged(keys="label", reader="medseg.io.MedsegReader"),
            EnsureChannelFirstd(keys="label"),
            Orientationd(keys="label", axcodes="RAS"),
            Spacingd(keys="label", pixdim=(1.0, 1.0, 2.0), mode="nearest"),
        ]
    )
    data = preprocess({"label": mask_folder})
    assert data["label"].pixdim.tolist() == pytest.approx([1.0, 1.0, 2.0])
    data["pred"] = data["label"].clone()
    inverted = Invertd(keys="pred", transform=preprocess, orig_keys="label", nearest_interp=True)(data)[
        "pred"
    ]
    original = load_image(mask_folder)
    assert inverted.shape == (1, *original.shape)
    torch.testing.assert_close(inverted.affine, original.affine, atol=1e-4, rtol=0)
    a, b = inverted[0].numpy() > 0.5, original.numpy() > 0.5
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert dice > 0.9  # only resampling loss from 6.5 mm -> 2 mm -> 6.5 mm with nearest neighbour


def test_verify_suffix(t1_folder: Path, nifti_file: Path, shared_data: Path) -> None:
    reader = MedsegReader()
    assert reader.verify_suffix(str(t1_folder))
    assert reader.verify_suffix([str(nifti_file), str(shared_data / "nrrd/pyradiomics/brain1_image.nrrd")])
    assert reader.verify_suffix(
        str(shared_data / "dicom/ct-liver-seg/23x38x3/seg/label.seg")
    )  # DICM preamble
    assert not reader.verify_suffix(str(shared_data / "dicom/ct-liver-seg/LICENSE"))


def test_nrrd_through_loadimaged_matches_load_image(shared_data: Path) -> None:
    path = shared_data / "nrrd/pyradiomics/brain1_image.nrrd"
    out = LoadImaged(keys="image", reader="medseg.io.MedsegReader")({"image": str(path)})["image"]
    direct = load_image(path)
    torch.testing.assert_close(out.as_tensor(), direct.as_tensor())
    torch.testing.assert_close(out.affine, direct.affine)


def test_four_d_nifti_keeps_channels_last(nifti_file: Path, tmp_path: Path) -> None:
    real = nib.load(nifti_file)
    data = real.get_fdata(dtype=np.float32)
    path = tmp_path / "two_channels.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([data, 2 * data], axis=-1), real.affine), path)
    image = load_image(path)
    assert image.shape == (*data.shape, 2) and image.meta["original_channel_dim"] == -1
    assert image.meta["spatial_shape"].tolist() == list(data.shape)
    out = _pipeline("medseg.io.MedsegReader")({"image": str(path)})["image"]
    reference = _pipeline("NibabelReader")({"image": str(path)})["image"]
    assert out.shape[0] == 2
    torch.testing.assert_close(out.as_tensor(), reference.as_tensor())
    torch.testing.assert_close(out.affine, reference.affine)
