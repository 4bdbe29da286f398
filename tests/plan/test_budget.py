"""Compute budgets (medseg.plan.budget): one class per kind, judged on the shipped hippocampus plan."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from support.networks import SMALL_UNET

from medseg.errors import ConfigError
from medseg.plan.budget import (
    BUDGETS,
    CALIBRATED_MARGIN,
    Assessment,
    CpuBudget,
    GpuBudget,
    make_budget,
    resenc_preset,
)
from medseg.plan.planner import TARGETS, make_plan

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"


@pytest.fixture(scope="module")
def fingerprint() -> dict[str, Any]:
    return json.loads((BUNDLE / "plans" / "fingerprint.json").read_text())


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return json.loads((BUNDLE / "plans" / "plan.json").read_text())


def test_budget_kinds_and_bad_budgets() -> None:
    assert TARGETS == ("cpu", "gpu")
    assert isinstance(make_budget("cpu", cores=2), CpuBudget)
    assert isinstance(make_budget("gpu", gpu_memory_gb=24), GpuBudget)
    with pytest.raises(ConfigError, match="choose cpu or gpu"):
        make_budget("tpu")
    with pytest.raises(ConfigError, match="must be positive"):
        make_budget("cpu", max_minutes=0)


@pytest.mark.parametrize(
    ("gpu_memory_gb", "preset"),
    [(4, "M"), (8, "M"), (15.9, "M"), (16, "L"), (24, "L"), (31.9, "L"), (32, "XL"), (40, "XL"), (80, "XL")],
)
def test_resenc_preset_by_gpu_memory(gpu_memory_gb: float, preset: str) -> None:
    """Below 16 GB M, below 32 GB L, else XL; the preset is the residual-encoder U-Net's, the GPU default."""
    assert resenc_preset(gpu_memory_gb).name == preset
    budget = make_budget("gpu", gpu_memory_gb=gpu_memory_gb)
    assert budget.network == "resencunet" and isinstance(budget, GpuBudget)
    assert budget.preset is not None and budget.preset.name == preset
    assert budget.data()["preset"]["name"] == preset and budget.value() == {"target": "gpu", "preset": preset}
    assert make_budget("gpu", gpu_memory_gb=gpu_memory_gb, network="unet").preset is None
    assert "preset" not in make_budget("cpu", gpu_memory_gb=gpu_memory_gb, cores=2).data()


def test_cpu_budget_judges_the_shipped_network_as_planned(shipped: dict[str, Any]) -> None:
    """The CPU budget's assessment of the shipped network and patch is what the plan recorded."""
    values = {k: v["value"] for k, v in shipped["values"].items()}
    budget = CpuBudget(max_minutes=15, cores=2)
    cap = shipped["values"]["batch_size"]["data"]["cap_for_5_percent"]
    planned_folds = shipped["values"]["training"]["data"]["planned"]["value"][
        "train_folds"
    ]  # before overrides
    samples = sum(1 for i in range(shipped["inputs"]["dataset"]["num_cases"]) if i % 5 in planned_folds)
    assessment = budget.assess(values["network"], values["patch_size"], cap, samples, slicing=False)
    assert assessment.fits and assessment.batch == values["batch_size"] == 2
    assert {"target": "cpu", **assessment.cost} == values["compute"]
    assert budget.channels_last and not GpuBudget.channels_last


def test_gpu_budget_too_small_says_what_to_do(fingerprint: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="GiB of GPU memory even at the smallest size; choose a lighter"):
        make_plan(fingerprint, target="gpu", gpu_memory_gb=0.5)


@pytest.fixture
def new_budget_kind() -> Iterator[str]:
    yield "gpu-batch4"
    BUDGETS.pop("gpu-batch4", None)


def test_new_budget_kind_is_one_class(fingerprint: dict[str, Any], new_budget_kind: str) -> None:
    @dataclass(frozen=True)
    class FixedBatchBudget(GpuBudget):
        """GPU memory, but never more than 4 samples per batch."""

        target: ClassVar[str] = new_budget_kind

        def assess(
            self, config: Mapping[str, Any], patch: list[int], *args: Any, **kwargs: Any
        ) -> Assessment:
            judged = super().assess(config, patch, *args, **kwargs)
            return Assessment(judged.fits, min(4, judged.batch), judged.step, judged.cost)

    assert BUDGETS[new_budget_kind] is FixedBatchBudget  # defining it registered it
    gpu = make_plan(fingerprint, target="gpu")
    plan = make_plan(fingerprint, target=new_budget_kind)
    assert gpu["values"]["batch_size"]["value"] > 4
    assert plan["values"]["batch_size"]["value"] == 4
    assert plan["inputs"]["target"] == plan["values"]["compute"]["value"]["target"] == new_budget_kind
    assert plan["values"]["network"] == gpu["values"]["network"]


@pytest.mark.parametrize(("calibrated_over", "timed"), [(1.2, True), (CALIBRATED_MARGIN * 1.1, False)])
def test_a_candidate_near_the_limit_is_timed(calibrated_over: float, timed: bool) -> None:
    """The FLOP model's measured-to-predicted ratio varies with the network, so a candidate predicted to
    miss the allowed step by less than CALIBRATED_MARGIN is timed, and its measured step decides."""
    calls: list[float] = []

    class Timer:
        ratio = 2.0

        def seconds(self, config: Any, patch: Any, batch: int, predicted: float, channels_last: bool) -> float:
            calls.append(predicted)
            return 0.5  # measured: fits a limit of 1 s

    budget = CpuBudget(max_minutes=15, cores=2, timer=Timer())  # type: ignore[arg-type]
    limit = 1.0
    predicted = limit * calibrated_over / Timer.ratio
    seconds, times = budget._measured(SMALL_UNET, [32, 32], 2, predicted, limit)
    assert bool(calls) == timed
    assert seconds == (0.5 if timed else pytest.approx(predicted * Timer.ratio))
    assert ("seconds_per_step_measured" in times) == timed
