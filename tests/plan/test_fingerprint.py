"""Dataset fingerprint (medseg.plan.fingerprint): content, determinism, speed."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from medseg.data.dataset import DatasetError, open_dataset
from medseg.plan.fingerprint import extract_fingerprint

pytestmark = pytest.mark.needs_data


def test_fingerprint_content(msd_copy):
    spec = open_dataset(msd_copy())
    fp = extract_fingerprint(spec, workers=1, progress=False)
    assert fp["dataset"]["num_cases"] == len(spec.cases) == len(fp["cases"])
    assert [c["case_id"] for c in fp["cases"]] == [c.case_id for c in spec.cases]
    for case in fp["cases"]:
        assert case["spacing"] == [1.0, 1.0, 1.0] and case["orientation"] == "RAS"
        assert sum(case["label_voxels"].values()) == int(np.prod(case["shape"]))
        assert all(c <= s for c, s in zip(case["shape_after_crop"], case["shape"], strict=True))
    stats = fp["foreground_intensity"]["0"]
    assert stats["percentile_00_5"] <= stats["median"] <= stats["percentile_99_5"] <= stats["max"]
    assert sum(fp["label_fraction"].values()) == pytest.approx(1.0, abs=1e-5)
    assert fp["dataset"]["licence"] == "CC-BY-SA 4.0"


def test_fingerprint_deterministic(msd_copy):
    spec = open_dataset(msd_copy())
    one = json.dumps(extract_fingerprint(spec, workers=1, progress=False), sort_keys=True)
    two = json.dumps(extract_fingerprint(spec, workers=2, progress=False), sort_keys=True)
    assert one == two


def test_fingerprint_png(kvasir_png):
    fp = extract_fingerprint(open_dataset(kvasir_png), workers=2, progress=False)
    assert set(fp["foreground_intensity"]) == {"0", "1", "2"}
    assert all(c["orientation"] == "" and len(c["shape"]) == 2 for c in fp["cases"])
    assert 0 <= fp["foreground_intensity"]["0"]["min"] and fp["foreground_intensity"]["0"]["max"] <= 255


def test_fingerprint_refuses_bad_case(msd_copy):
    import nibabel as nib

    root = msd_copy()
    label = sorted((root / "labelsTr").iterdir())[3]
    img = nib.load(str(label))
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, img.affine), str(label))
    with pytest.raises(DatasetError, match=label.name.removesuffix(".nii.gz")):
        extract_fingerprint(open_dataset(root), workers=2, progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["msd-task04-hippocampus", "la2018-left-atrium"])
def test_fingerprint_real_dataset_fast(shared_data, name):
    start = time.perf_counter()
    fp = extract_fingerprint(open_dataset(shared_data / name), workers=2, progress=False)
    assert time.perf_counter() - start < 120
    assert fp["dataset"]["num_cases"] in (260, 80)
