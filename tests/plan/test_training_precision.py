"""The training precision a measured plan chooses (medseg.plan.cost.StepTimer.training_precision):
bf16 autocast with fp32 master weights where the CPU has bf16 units and a bf16 step measured at
least 10 % faster, else fp32; ``medseg train --precision auto`` follows it on that CPU model only.

The CPU is faked through a cpuinfo file (with and without ``avx512_bf16``); the times that decide are
faked too where a test checks the rule, so the rule is tested on any machine, and one real bf16 step
of a tiny network is timed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from support.networks import SMALL_UNET

import medseg.plan.cost as cost
from medseg.plan.cost import StepTimer, measure_step
from medseg.plan.planner import make_plan
from medseg.precision import BF16_TRAINING_MIN_SPEEDUP, bf16_units, cpu_model, resolve_precision

REPO = Path(__file__).resolve().parents[2]
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse2 avx2 avx512f {extra}
"""
FAKE_MODEL = "AMD EPYC 9R14 (family 25, model 17)"


def _cpuinfo(tmp_path: Path, bf16: bool) -> str:
    path = tmp_path / ("cpuinfo-bf16" if bf16 else "cpuinfo-avx2")
    path.write_text(CPUINFO.format(extra="avx512_bf16 avx512_vnni" if bf16 else ""))
    return str(path)


def _fake_steps(monkeypatch: pytest.MonkeyPatch, fp32: float, bf16: float) -> list[str]:
    """measure_step replaced by fixed times per precision; returns the precisions it was asked for."""
    asked: list[str] = []

    def fake(config, patch, batch, device="cpu", steps=1, channels_last=False, precision="fp32") -> float:
        asked.append(precision)
        return bf16 if precision == "bf16" else fp32

    monkeypatch.setattr(cost, "measure_step", fake)
    return asked


@pytest.fixture(scope="module")
def fingerprint() -> dict[str, Any]:
    return json.loads((REPO / "bundles/hippocampus_unet3d/plans/fingerprint.json").read_text())


def test_a_bf16_step_is_timed_with_fp32_master_weights() -> None:
    assert measure_step(SMALL_UNET, [32, 32], 2, steps=1, precision="bf16") > 0


@pytest.mark.parametrize(("bf16_seconds", "chosen"), [(0.08, "bf16"), (0.095, "fp32")])
def test_bf16_only_when_measured_at_least_ten_percent_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bf16_seconds: float, chosen: str
) -> None:
    asked = _fake_steps(monkeypatch, fp32=0.1, bf16=bf16_seconds)
    timer = StepTimer(cache_file=tmp_path / "steps.json", steps=1, cpuinfo=_cpuinfo(tmp_path, bf16=True))
    record = timer.training_precision(SMALL_UNET, [32, 32], 2, fp32_seconds=0.1, channels_last=True)
    assert asked == ["bf16"] and timer.measured == 1
    assert record["value"] == chosen
    assert record["seconds_per_step_bf16"] == bf16_seconds
    assert record["bf16_speedup"] == pytest.approx(0.1 / bf16_seconds, abs=0.005)
    assert (record["bf16_speedup"] >= BF16_TRAINING_MIN_SPEEDUP) == (chosen == "bf16")
    assert record["cpu"] == FAKE_MODEL and record["bf16_units"] == ["avx512_bf16"]
    assert f"so {chosen}" in record["rule"]
    # the bf16 time is cached beside, not over, the candidate's fp32 time, and does not calibrate the model
    assert timer.ratio == 1.0
    timer.seconds(SMALL_UNET, [32, 32], 2, predicted=0.05, channels_last=True)
    entries = json.loads((tmp_path / "steps.json").read_text())
    assert sorted(e.get("precision", "fp32") for e in entries.values()) == ["bf16", "fp32"]


def test_a_cpu_without_bf16_units_is_not_timed_and_plans_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _fake_steps(monkeypatch, fp32=0.1, bf16=0.01)
    timer = StepTimer(cache_file=tmp_path / "steps.json", steps=1, cpuinfo=_cpuinfo(tmp_path, bf16=False))
    record = timer.training_precision(SMALL_UNET, [32, 32], 2, fp32_seconds=0.1)
    assert asked == [] and timer.measured == 0
    assert record["value"] == "fp32" and record["seconds_per_step_bf16"] is None
    assert "no bf16 units" in record["rule"]


@pytest.mark.parametrize(
    ("bf16", "bf16_seconds", "chosen"), [(True, 0.04, "bf16"), (True, 0.048, "fp32"), (False, 0.04, "fp32")]
)
def test_measured_plan_records_both_times_and_the_precision(
    fingerprint: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    bf16: bool,
    bf16_seconds: float,
    chosen: str,
) -> None:
    """The plan's training entry says which precision and why; its epochs fit the budget at the step it
    trains with."""
    _fake_steps(monkeypatch, fp32=0.05, bf16=bf16_seconds)
    timer = StepTimer(cache_file=tmp_path / "steps.json", steps=1, cpuinfo=_cpuinfo(tmp_path, bf16))
    plan = make_plan(fingerprint, target="cpu", cpu_cores=2, max_minutes=100, timer=timer)
    training = plan["values"]["training"]
    record = training["data"]["precision"]
    assert training["value"]["precision"] == chosen
    assert record["seconds_per_step_fp32"] == plan["values"]["compute"]["value"]["seconds_per_step_measured"]
    assert record["seconds_per_step_bf16"] == (bf16_seconds if bf16 else None)
    assert "precision: bf16 autocast with fp32 master weights" in training["rule"]
    step = bf16_seconds if chosen == "bf16" else 0.05
    steps_per_epoch = plan["values"]["compute"]["value"]["steps_per_epoch"]
    step += plan["values"]["compute"]["value"]["seconds_per_step_data"]  # the network's step plus the data's
    assert training["value"]["max_epochs"] == int(100 * 60 * 0.9 / (step * steps_per_epoch))
    # an unmeasured plan records no precision: training keeps the CPU rule
    assert "precision" not in make_plan(fingerprint, target="cpu", cpu_cores=2)["values"]["training"]["value"]


def test_training_follows_the_plan_on_its_cpu_model_only() -> None:
    avx512, amx, avx2 = frozenset({"avx512_bf16"}), frozenset({"amx_bf16"}), frozenset({"avx2"})
    chose_bf16 = {"value": "bf16", "cpu": FAKE_MODEL, "bf16_speedup": 1.26}
    chose_fp32 = {"value": "fp32", "cpu": FAKE_MODEL, "bf16_speedup": 1.04}

    measured = resolve_precision("auto", "cpu", avx512, training=True, planned=chose_bf16, model=FAKE_MODEL)
    assert measured.dtype == "bf16" and "the plan measured a bf16 training step 1.26x" in measured.reason
    kept = resolve_precision("auto", "cpu", amx, training=True, planned=chose_fp32, model=FAKE_MODEL)
    assert kept.dtype == "fp32" and "1.04x" in kept.reason  # the measurement wins over the AMX rule
    # measured on another CPU model: the CPU rule (AVX-512-BF16 alone trains in fp32), and it says why
    other = resolve_precision("auto", "cpu", avx512, training=True, planned=chose_bf16, model="Intel Xeon")
    assert other.dtype == "fp32" and f"taken on {FAKE_MODEL}" in other.reason
    # no bf16 units: fp32 whatever the plan chose, and the record says so
    emulated = resolve_precision("auto", "cpu", avx2, training=True, planned=chose_bf16, model=FAKE_MODEL)
    assert emulated.dtype == "fp32" and "emulated" in emulated.reason
    # asked-for precisions and inference ignore the plan
    assert resolve_precision("fp32", "cpu", avx512, training=True, planned=chose_bf16).dtype == "fp32"
    assert resolve_precision("auto", "cpu", avx512, planned=chose_fp32).dtype == "bf16"


@pytest.mark.slow  # one short training epoch on 8 cases
def test_train_auto_trains_in_the_precision_the_plan_chose(tmp_path: Path) -> None:
    from medseg.bundle import open_bundle, train_bundle
    from medseg.bundle.train import planned_precision

    root = tmp_path / "hippocampus_unet3d"
    shutil.copytree(REPO / "bundles/hippocampus_unet3d", root, ignore=shutil.ignore_patterns("runs", "cv"))
    plan = json.loads((root / "plans/plan.json").read_text())
    plan["values"]["training"]["value"]["precision"] = "bf16"
    plan["values"]["training"]["data"]["precision"] = {"cpu": cpu_model(), "bf16_speedup": 1.3}
    (root / "plans/plan.json").write_text(json.dumps(plan))
    bundle = open_bundle(root)
    assert planned_precision(bundle) == {"value": "bf16", "cpu": cpu_model(), "bf16_speedup": 1.3}

    result = train_bundle(
        bundle,
        epochs=1,
        output_dir=tmp_path / "run",
        progress=False,
        precision="auto",
        train_datalist="$@datalist[5:13]",
        val_datalist="$@datalist[:2]",
        num_workers=0,
    )
    expected = "bf16" if bf16_units() else "fp32"  # a CPU without bf16 units trains in fp32 whatever the plan
    assert result["precision"]["dtype"] == expected
    assert ("the plan measured" in result["precision"]["reason"]) == bool(bf16_units())
