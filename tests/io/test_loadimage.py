"""medseg.io.LoadImaged: the strict reader's refusal is not bypassed by MONAI's fallback readers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medseg.io import LoadImaged, load_image

pytestmark = pytest.mark.needs_data


@pytest.fixture()
def series_with_missing_slice(shared_data: Path, tmp_path: Path) -> Path:
    source = shared_data / "dicom" / "hippocampus-crops" / "Study1"
    target = tmp_path / "Study1"
    shutil.copytree(source, target)
    (target / "16.dcm").unlink()  # a middle slice: the series now has a gap
    return target


def test_strict_loader_refuses_what_monai_would_load_through_another_reader(
    series_with_missing_slice: Path,
) -> None:
    from monai.transforms import LoadImaged as MonaiLoadImaged

    # MONAI falls back to its other readers when the named one refuses: the broken series loads.
    fallback = MonaiLoadImaged(keys="image", reader="medseg.io.MedsegReader", image_only=True)
    assert fallback({"image": str(series_with_missing_slice)})["image"].ndim == 3

    with pytest.raises(RuntimeError, match="missing slice"):
        LoadImaged(keys="image", image_only=True)({"image": str(series_with_missing_slice)})


def test_strict_loader_reads_like_medseg_io(shared_data: Path) -> None:
    folder = shared_data / "dicom" / "hippocampus-crops" / "Study2"
    loaded = LoadImaged(keys="image", image_only=True)({"image": str(folder)})["image"]
    reference = load_image(folder)
    assert loaded.shape == reference.shape
    assert (loaded.affine == reference.affine).all()
