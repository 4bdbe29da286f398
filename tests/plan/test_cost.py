"""A training step's cost (medseg.plan.cost): counted on the meta device, measured on this machine,
cached per machine, torch version and candidate; a measured plan records both times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from support.networks import SMALL_UNET

from medseg.errors import ConfigError
from medseg.plan import cost
from medseg.plan.cost import StepTimer, estimate_step, measure_step
from medseg.plan.planner import explain, make_plan
from medseg.precision import bf16_units
from medseg.render import BundleTemplate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fingerprint() -> dict[str, Any]:
    return json.loads((REPO / "bundles/hippocampus_unet3d/plans/fingerprint.json").read_text())


def test_count_and_measurement_of_one_step() -> None:
    counted = estimate_step(SMALL_UNET, [32, 32], 2)
    assert counted["gflop"] > 0 and counted["parameters"] > 0
    assert measure_step(SMALL_UNET, [32, 32], 2, steps=1) > 0


def test_step_timer_caches_per_candidate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cost, "load_per_core", lambda: 0.2)  # a quiet machine, whatever runs beside the test
    cache = tmp_path / "step_times.json"
    first = StepTimer(cache_file=cache, steps=1)
    seconds = first.seconds(SMALL_UNET, [32, 32], 2, predicted=0.001)
    assert first.measured == 1 and first.cached == 0
    assert first.ratio == pytest.approx(seconds / 0.001)

    again = StepTimer(cache_file=cache, steps=1)  # a later plan on this machine: nothing is timed
    assert again.seconds(SMALL_UNET, [32, 32], 2, predicted=0.001) == seconds
    assert (again.measured, again.cached) == (0, 1)
    again.seconds(SMALL_UNET, [32, 32], 4, predicted=0.001)  # another candidate is timed
    assert again.measured == 1 and len(json.loads(cache.read_text())) == 2

    context = again.context()
    assert context["torch"] == torch.__version__ and context["threads"] == torch.get_num_threads()
    assert context["machine"] and context["device"] == "cpu"


def test_times_from_a_busy_machine_are_measured_again_when_it_is_quieter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step timed on a busy machine is timed again once the machine is quieter, and the faster time kept;
    the plan learns the busiest load its measurements ran under."""
    cache = tmp_path / "step_times.json"
    times = iter([0.9, 0.3])  # busy, then quiet
    monkeypatch.setattr(cost, "measure_step", lambda *args, **kwargs: next(times))
    loads = {"now": 3.0}
    monkeypatch.setattr(cost, "load_per_core", lambda: loads["now"])

    busy = StepTimer(cache_file=cache)
    assert busy.seconds(SMALL_UNET, [32, 32], 2, predicted=0.01) == 0.9 and busy.load == 3.0
    assert StepTimer(cache_file=cache).seconds(SMALL_UNET, [32, 32], 2, predicted=0.01) == 0.9  # still busy

    loads["now"] = 0.4
    quiet = StepTimer(cache_file=cache)
    assert quiet.seconds(SMALL_UNET, [32, 32], 2, predicted=0.01) == 0.3 and quiet.measured == 1
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["seconds"] == 0.3 and entry["load"] == 0.4
    again = StepTimer(cache_file=cache)  # measured quiet: cached from now on
    assert again.seconds(SMALL_UNET, [32, 32], 2, predicted=0.01) == 0.3 and again.cached == 1


def test_data_pipeline_is_timed_as_the_bundle_runs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shipped hippocampus bundle's random transforms, timed on an image of its cached shape and
    cached per transforms: the same transforms again are not timed, other ones are."""
    monkeypatch.setattr(cost, "load_per_core", lambda: 0.2)
    plan = json.loads((REPO / "bundles/hippocampus_unet3d/plans/plan.json").read_text())
    config = BundleTemplate(plan).train()
    key, shape = "train#random_transforms", [36, 50, 35]
    timer = StepTimer(cache_file=tmp_path / "step_times.json")
    seconds = timer.transform_seconds(config, key, shape, 1)
    assert 0 < seconds < 1 and timer.measured == 1
    again = StepTimer(cache_file=tmp_path / "step_times.json")
    assert again.transform_seconds(config, key, shape, 1) == seconds and again.measured == 0
    config["roi_size"] = [32, 48, 32]  # a transform's referenced entry is part of what was timed
    assert again.transform_seconds(config, key, shape, 1) > 0 and again.measured == 1
    assert again.transform_seconds(config, key, [40, 56, 40], 1) > 0 and again.measured == 2


@pytest.mark.slow  # times real steps of a 4.7 M-parameter 3-D network
def test_measured_plan_records_measured_and_predicted(
    fingerprint: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget the FLOP model already fits, one candidate is timed (and its bf16 step, on a CPU
    with bf16 units), and the plan's epochs come from the measured step of the precision it trains in;
    planning again on this machine takes the times from the cache."""
    monkeypatch.setattr(cost, "load_per_core", lambda: 0.2)  # quiet, whatever runs beside the test
    timer = StepTimer(cache_file=tmp_path / "step_times.json", steps=1)
    plan = make_plan(fingerprint, target="cpu", cpu_cores=2, max_minutes=100_000, timer=timer)
    compute = plan["values"]["compute"]
    measured = compute["value"]["seconds_per_step_measured"]
    # the candidate's step, its bf16 step on a CPU with bf16 units, and the data pipeline
    assert timer.measured == 2 + bool(bf16_units()) and compute["value"]["seconds_per_step"] == measured
    assert compute["value"]["seconds_per_step_predicted"] > 0
    assert compute["data"]["measurement"] == {**timer.context(), "load_per_core": 0.2}
    assert "measured on this machine" in compute["rule"]
    steps_per_epoch = compute["value"]["steps_per_epoch"]
    training = plan["values"]["training"]
    if training["value"]["precision"] == "bf16":
        measured = training["data"]["precision"]["seconds_per_step_bf16"]
    data = compute["value"]["seconds_per_step_data"]
    assert 0 < data < measured  # the hippocampus' random transforms cost less than its network step
    assert training["value"]["max_epochs"] == int(100_000 * 60 * 0.9 / ((measured + data) * steps_per_epoch))
    assert "data pipeline" in compute["rule"] and "data pipeline" in training["rule"]
    text = explain(plan)
    assert "seconds_per_step_measured" in text and "seconds_per_step_predicted" in text

    cached = StepTimer(cache_file=tmp_path / "step_times.json", steps=1)
    assert make_plan(fingerprint, target="cpu", cpu_cores=2, max_minutes=100_000, timer=cached) == plan
    assert cached.measured == 0
    # the bundle is rendered from the plan alone: its check does not depend on this machine
    assert BundleTemplate(plan).files() == BundleTemplate(json.loads(json.dumps(plan))).files()


def test_gpu_plans_are_not_timed(fingerprint: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sized by memory"):
        make_plan(fingerprint, target="gpu", timer=StepTimer(cache_file=tmp_path / "c.json"))
