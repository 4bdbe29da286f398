"""``medseg series`` and ``medseg convert`` through ``medseg.cli.main.main``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medseg.cli.main import main
from medseg.io import load_image

pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def study(shared_data: Path) -> Path:
    return sorted((shared_data / "tcia-brain-tumor/PGBM-001").iterdir())[0]


def _study_series(study: Path) -> dict[str, str]:
    """description -> SeriesInstanceUID, read here with pydicom."""
    found = {}
    for folder in study.iterdir():
        ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
        found[str(ds.SeriesDescription)] = str(ds.SeriesInstanceUID)
    return found


def test_series_lists_the_three_series_of_a_study(study: Path, capsys) -> None:
    assert main(["series", str(study)]) == 0
    out = capsys.readouterr().out
    expected = _study_series(study)
    assert sorted(expected) == ["FLAIR_reg", "Mask_Tumor", "T1post"]
    for description, uid in expected.items():
        (line,) = [line for line in out.splitlines() if line.startswith(uid)]
        assert description in line and "MR" in line and "yes" in line and "LPS" in line
    assert "3 series, 3 image series, 0 problem(s)" in out


def test_series_json_shape(shared_data: Path, capsys) -> None:
    assert main(["series", str(shared_data / "dicom/ct-liver-seg"), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert list(document) == ["series"]
    keys = ["uid", "modality", "description", "slices", "size", "spacing", "orientation", "image", "problems"]
    for entry in document["series"]:
        assert list(entry) == keys
        assert isinstance(entry["uid"], str) and isinstance(entry["image"], bool)
        assert isinstance(entry["slices"], int) and isinstance(entry["problems"], list)
    by_description = {e["description"]: e for e in document["series"]}
    mf = by_description["Multiframe image 23x38x3"]
    assert mf["image"] is True and mf["size"] == [23, 38, 3] and mf["orientation"] == "LPS"
    assert mf["spacing"] == pytest.approx([0.7, 0.7, 2.5])
    seg = by_description["Liver Segmentation"]
    assert seg["modality"] == "SEG" and seg["image"] is False
    # the two label-map SEG files of the data (with and without PixelPaddingValue) share one
    # SOPInstanceUID: counted once and reported
    (dup,) = [e for e in document["series"] if any("duplicates" in p for p in e["problems"])]
    assert dup["slices"] == 2 and dup["image"] is False
    assert "different content" in dup["problems"][0] and "sparse-labelmap" in dup["problems"][0]


def test_series_reports_problems_but_exits_zero(shared_data: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "series"
    shutil.copytree(shared_data / "dicom/hippocampus-crops/Study1", folder)
    (folder / "9.dcm").unlink()
    assert main(["series", str(folder), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["series"]
    assert entry["slices"] == 31 and any("missing slice" in p for p in entry["problems"])
    assert main(["series", str(folder)]) == 0
    assert "problem: series" in capsys.readouterr().out


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_series_errors_on_missing_or_empty_folder(tmp_path: Path, capsys, make: str) -> None:
    folder = tmp_path / "nothing"
    if make == "empty":
        folder.mkdir()
    assert main(["series", str(folder)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err


def test_convert_dicom_series_to_nifti(study: Path, tmp_path: Path, capsys) -> None:
    uids = _study_series(study)
    for description in ("T1post", "Mask_Tumor"):
        out = tmp_path / f"{description}.nii.gz"
        assert main(["convert", str(study), str(out), "--series", uids[description]]) == 0
        assert uids[description] in capsys.readouterr().out
        nifti = nib.load(out)
        reference = load_image(study, series_uid=uids[description], dtype=None)
        np.testing.assert_allclose(nifti.affine, reference.affine.numpy(), atol=1e-5)
        np.testing.assert_array_equal(np.asanyarray(nifti.dataobj), reference.numpy())
        assert np.asanyarray(nifti.dataobj).dtype == reference.numpy().dtype  # stored type kept (no float32)


def test_convert_nrrd_to_nifti(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "nrrd/pyradiomics/prostate_phantom_subvolume.nrrd"
    out = tmp_path / "prostate.nii"
    assert main(["convert", str(src), str(out)]) == 0
    np.testing.assert_allclose(nib.load(out).affine, load_image(src).affine.numpy(), atol=1e-6)


def _no_output(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_convert_refuses_several_series_without_choice(study: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.nii.gz"
    assert main(["convert", str(study), str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--series" in err
    for uid in _study_series(study).values():
        assert uid in err
    _no_output(tmp_path, out)


def test_convert_refusals_write_nothing(shared_data: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(shared_data / "dicom/hippocampus-crops/Study1", broken)
    (broken / "12.dcm").unlink()
    cases = [
        ([str(broken)], "missing slice"),
        ([str(tmp_path / "absent")], "does not exist"),
        ([str(shared_data / "dicom/ct-liver-seg/liver.dcm")], "no image series"),
        ([str(shared_data / "dicom/hippocampus-crops/Study1"), "--series", "1.2.3"], "not in"),
        ([str(shared_data / "nrrd/pyradiomics/brain1_image.nrrd"), "--series", "1.2.3"], "DICOM input only"),
    ]
    for arguments, expected in cases:
        out = tmp_path / "out.nii.gz"
        assert main(["convert", arguments[0], str(out), *arguments[1:]]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
        _no_output(tmp_path, out)
    assert (
        main(["convert", str(shared_data / "dicom/hippocampus-crops/Study1"), str(tmp_path / "out.nrrd")])
        != 0
    )
    assert "must end in .nii" in capsys.readouterr().err
    assert not (tmp_path / "out.nrrd").exists()
