"""``medseg plan`` end to end: files written, --explain, --force, and bad datasets refused."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from medseg.cli.main import main

pytestmark = pytest.mark.needs_data


def test_plan_writes_fingerprint_and_plan(msd_copy, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["plan", str(msd_copy()), "--output", str(out), "--target", "cpu", "--explain"]) == 0
    printed = capsys.readouterr().out
    assert "patch_size:" in printed and "rule:" in printed and "written:" in printed
    fingerprint = json.loads((out / "plans" / "fingerprint.json").read_text())
    plan = json.loads((out / "plans" / "plan.json").read_text())
    assert fingerprint["dataset"]["num_cases"] == 6 and plan["inputs"]["target"] == "cpu"
    assert all({"value", "rule", "data"} <= set(entry) for entry in plan["values"].values())

    assert main(["plan", str(msd_copy(name="again")), "--output", str(out)]) != 0
    assert "--force" in capsys.readouterr().err
    assert main(["plan", str(msd_copy(name="forced")), "--output", str(out), "--force", "--name", "x"]) == 0
    assert json.loads((out / "plans" / "plan.json").read_text())["inputs"]["name"] == "x"


def test_plan_png_dataset(kvasir_png, tmp_path):
    out = tmp_path / "polyps"
    assert main(["plan", str(kvasir_png), "-o", str(out), "--target", "cpu", "--network", "fcn"]) == 0
    plan = json.loads((out / "plans" / "plan.json").read_text())
    assert (
        plan["inputs"]["dims"] == 2
        and plan["values"]["network"]["value"]["_target_"] == "medseg.networks.FCN"
    )


def _nan_image(root):
    image = sorted((root / "imagesTr").iterdir())[1]
    img = nib.load(str(image))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[2, 2, 2] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), str(image))
    return image.name.removesuffix(".nii.gz")


def _missing_label(root):
    label = sorted((root / "labelsTr").iterdir())[4]
    label.unlink()
    return label.name.removesuffix(".nii.gz")


def _too_few(root):
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = meta["training"][:3]
    (root / "dataset.json").write_text(json.dumps(meta))
    return "3 labelled case"


@pytest.mark.parametrize("breaker", [_nan_image, _missing_label, _too_few])
def test_bad_dataset_one_line_nothing_written(msd_copy, tmp_path, capsys, breaker):
    root = msd_copy()
    expected = breaker(root)
    out = tmp_path / "bundle"
    assert main(["plan", str(root), "--output", str(out), "--workers", "2"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and err.startswith("medseg plan: error:")
    assert not out.exists()
    shutil.rmtree(root)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["msd-task04-hippocampus", "la2018-left-atrium"])
def test_plan_real_dataset_within_three_minutes(shared_data, tmp_path, name):
    import time

    start = time.perf_counter()
    assert main(["plan", str(shared_data / name), "--output", str(tmp_path / "b"), "--target", "cpu"]) == 0
    assert time.perf_counter() - start < 180
    plan = json.loads((tmp_path / "b" / "plans" / "plan.json").read_text())
    assert plan["inputs"]["dataset_folder"] == name
    assert (tmp_path / "b" / "configs" / "train.json").is_file()


def test_recorded_overrides_are_applied(msd_copy, tmp_path):
    out = tmp_path / "bundle"
    (out / "plans").mkdir(parents=True)
    (out / "plans" / "overrides.json").write_text(json.dumps({"augmentation.mirror_axes": [0]}))
    assert main(["plan", str(msd_copy()), "--output", str(out), "--target", "cpu"]) == 0
    train = json.loads((out / "configs" / "train.json").read_text())
    flips = [t for t in train["train"]["random_transforms"] if t["_target_"] == "RandFlipd"]
    assert [t["spatial_axis"] for t in flips] == [0]
    assert json.loads((out / "plans" / "overrides.json").read_text()) == {"augmentation.mirror_axes": [0]}


@pytest.mark.slow  # fingerprints a dataset and times real training steps
def test_plan_measure_times_steps_once_per_machine(msd_copy, tmp_path, capsys, monkeypatch):
    """--measure times the chosen candidate's training steps, prints measured beside predicted, and
    caches the time in the user's cache folder; a GPU plan is sized by memory and refuses it."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    dataset, out = msd_copy(), tmp_path / "bundle"
    args = ["plan", str(dataset), "-o", str(out), "--target", "cpu", "--max-minutes", "100000", "--measure"]
    assert main([*args, "--explain"]) == 0
    printed = capsys.readouterr().out
    assert "s measured on this machine" in printed and "seconds_per_step_predicted" in printed
    cache = json.loads((tmp_path / "cache" / "step_times.json").read_text())
    compute = json.loads((out / "plans" / "plan.json").read_text())["values"]["compute"]
    # one candidate timed in fp32: the first the FLOP model fits (and, on a CPU with bf16 units, its bf16 step)
    (timed,) = [entry for entry in cache.values() if "precision" not in entry and "transforms" not in entry]
    assert timed["seconds"] == pytest.approx(compute["value"]["seconds_per_step_measured"], rel=1e-3)
    # and its data pipeline: the random transforms' seconds per image, times the images a step draws
    (data,) = [entry for entry in cache.values() if "transforms" in entry]
    batch = json.loads((out / "plans" / "plan.json").read_text())["values"]["batch_size"]["value"]
    assert compute["value"]["seconds_per_step_data"] == pytest.approx(data["seconds"] * batch, rel=1e-2)
    assert "s of data pipeline per step" in printed

    assert main([*args[:-3], "--target", "gpu", "--measure", "--force"]) != 0
    assert "sized by memory" in capsys.readouterr().err


@pytest.mark.slow  # fingerprints a dataset and times real training steps
def test_cpu_plans_measure_by_default(msd_copy, tmp_path, monkeypatch):
    """A CPU plan times its steps unless told not to: --no-measure, or MEDSEG_PLAN_MEASURE=0 (which the
    test suite sets), plan from the FLOP model alone; a GPU plan times nothing."""
    monkeypatch.setenv("MEDSEG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDSEG_PLAN_MEASURE")
    dataset = msd_copy()

    def compute(*extra: str) -> dict:
        out = tmp_path / "_".join(extra or ("default",)).strip("-")
        assert main(["plan", str(dataset), "-o", str(out), "--max-minutes", "100000", *extra]) == 0
        return json.loads((out / "plans" / "plan.json").read_text())["values"]["compute"]["value"]

    assert "seconds_per_step_measured" in compute("--target", "cpu")
    assert "seconds_per_step_measured" not in compute("--target", "cpu", "--no-measure")
    monkeypatch.setenv("MEDSEG_PLAN_MEASURE", "0")
    assert "seconds_per_step_measured" not in compute("--target", "cpu", "--workers", "1")
    assert "memory_budget_gib" in compute("--target", "gpu")
