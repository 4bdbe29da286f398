"""GPU plans with nnU-Net's ResEnc presets (medseg.plan.budget, medseg.plan.planner): the hippocampus and
left-atrium data planned by ``medseg plan --gpu --gpu-memory-gb`` 8, 24 and 40, every memory estimate
counted on the meta device (no GPU needed), every bundle re-rendered and its network built."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest

from medseg.cli.main import main
from medseg.plan.budget import MIN_BATCH_SIZE, GpuBudget
from medseg.plan.cost import estimate_step
from medseg.plan.planner import make_plan
from medseg.render import check_bundle
from medseg.render.records import FINGERPRINT_FILE, PLAN_FILE

pytestmark = pytest.mark.needs_data

DATASETS = {"hippocampus": "msd-task04-hippocampus", "left_atrium": "la2018-left-atrium"}
PRESETS = {8: "M", 24: "L", 40: "XL"}
# A GPU too small for a batch of 2 at the median image shape (the patch must shrink).
SMALL_GPU_GB = {"hippocampus": 1.5, "left_atrium": 3.0}


@pytest.fixture(
    scope="module",
    params=["hippocampus", pytest.param("left_atrium", marks=pytest.mark.slow)],
)
def planned(request: pytest.FixtureRequest, shared_data: Path, tmp_path_factory) -> dict[int, Any]:
    """``medseg plan DATASET --gpu --gpu-memory-gb N --explain`` for 8, 24 and 40 GB: per size, the
    bundle folder, its plan and what the command printed."""
    out: dict[int, Any] = {}
    for gb in PRESETS:
        bundle = tmp_path_factory.mktemp(f"{request.param}_{gb}gb")
        args = ["plan", str(shared_data / DATASETS[request.param]), "-o", str(bundle), "--workers", "2"]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main([*args, "--gpu", "--gpu-memory-gb", str(gb), "--explain"]) == 0
        plan = json.loads((bundle / PLAN_FILE).read_text())
        out[gb] = {"bundle": bundle, "plan": plan, "printed": printed.getvalue(), "dataset": request.param}
    return out


def _value(plan: dict[str, Any], name: str) -> Any:
    return plan["values"][name]["value"]


def test_preset_follows_gpu_memory(planned: dict[int, Any]) -> None:
    for gb, name in PRESETS.items():
        plan = planned[gb]["plan"]
        compute = plan["values"]["compute"]
        assert plan["inputs"]["network"] == "resencunet" and plan["inputs"]["target"] == "gpu"
        assert compute["value"]["preset"] == name
        preset = compute["data"]["preset"]
        assert preset["name"] == name and preset["nnunet_planner"] == f"nnUNetPlannerResEnc{name}"
        assert preset["target_gb"] == gb and compute["data"]["gpu_memory_gb"] == gb
        assert "< 16 GB: M" in compute["rule"] and "< 32 GB: L" in compute["rule"]
        assert f"{gb} GB gets {name}" in compute["rule"]
        network = _value(plan, "network")
        levels = len(network["channels"])
        assert network["_target_"] == "medseg.networks.ResidualEncoderUNet"
        assert network["blocks_down"] == [1, 3, 4, 6, 6, 6][:levels] and network["blocks_up"] == [1] * (
            levels - 1
        )
        assert network["channels"][0] == 32 and max(network["channels"]) <= 320
        assert plan["values"]["batch_size"]["data"]["max_dataset_fraction"] == 1.0


def test_larger_gpu_grows_patch_batch_and_width(planned: dict[int, Any]) -> None:
    """Patch, batch and width never shrink from M to L to XL; the batch and the estimate grow."""
    sizes = sorted(PRESETS)
    plans = [planned[gb]["plan"] for gb in sizes]
    for smaller, larger in zip(plans, plans[1:], strict=False):
        small_patch, large_patch = _value(smaller, "patch_size"), _value(larger, "patch_size")
        assert all(s <= g for s, g in zip(small_patch, large_patch, strict=True))
        small_net, large_net = _value(smaller, "network"), _value(larger, "network")
        assert len(small_net["channels"]) <= len(large_net["channels"])
        assert all(s <= g for s, g in zip(small_net["channels"], large_net["channels"], strict=False))
        assert _value(smaller, "batch_size") < _value(larger, "batch_size")
        assert (
            _value(smaller, "compute")["memory_gib_at_batch"]
            < _value(larger, "compute")["memory_gib_at_batch"]
        )


def test_small_gpu_shrinks_the_patch(planned: dict[int, Any]) -> None:
    """Below 8 GB the patch is reduced from the median shape until a batch of 2 fits (nnU-Net's rule);
    it is the same preset, so only the memory made the difference."""
    reference = planned[8]
    fingerprint = json.loads((reference["bundle"] / FINGERPRINT_FILE).read_text())
    small = make_plan(fingerprint, target="gpu", gpu_memory_gb=SMALL_GPU_GB[reference["dataset"]])
    assert _value(small, "compute")["preset"] == "M"
    full, reduced = _value(reference["plan"], "patch_size"), _value(small, "patch_size")
    assert all(r <= f for r, f in zip(reduced, full, strict=True)) and reduced != full
    assert "reduced along the axis" in small["values"]["patch_size"]["rule"]
    assert _value(small, "compute")["memory_gib_at_batch"] <= SMALL_GPU_GB[reference["dataset"]]


def test_estimate_is_the_meta_count_within_budget(planned: dict[int, Any]) -> None:
    """The recorded estimate is the meta-device count at the planned batch, within the budget, and one
    sample more would not fit (unless the batch is capped by the data)."""
    for gb in PRESETS:
        plan = planned[gb]["plan"]
        compute, batch = _value(plan, "compute"), _value(plan, "batch_size")
        step = estimate_step(_value(plan, "network"), _value(plan, "patch_size"), MIN_BATCH_SIZE)
        per_sample = GpuBudget.step_bytes(step, MIN_BATCH_SIZE, per_sample=True)
        fixed = GpuBudget.step_bytes(step, MIN_BATCH_SIZE) - MIN_BATCH_SIZE * per_sample
        assert compute["memory_gib"] == pytest.approx((fixed + 2 * per_sample) / 2**30, rel=1e-3)
        assert compute["memory_gib_at_batch"] == pytest.approx((fixed + batch * per_sample) / 2**30, rel=1e-3)
        assert compute["memory_gib"] <= compute["memory_gib_at_batch"] <= compute["memory_budget_gib"] == gb
        cap = plan["values"]["batch_size"]["data"]["cap"]
        assert batch == cap or fixed + (batch + 1) * per_sample > gb * 2**30


def test_explain_prints_the_estimate_and_the_budget(planned: dict[int, Any]) -> None:
    for gb, name in PRESETS.items():
        plan, printed = planned[gb]["plan"], planned[gb]["printed"]
        compute, batch = _value(plan, "compute"), _value(plan, "batch_size")
        assert (
            f"GPU memory: {compute['memory_gib_at_batch']} GiB estimated for a training step at the planned "
            f"batch {batch} ({compute['memory_gib']} GiB at batch 2), budget {float(gb)} GiB; nnU-Net ResEnc "
            f"preset {name} (nnUNetPlannerResEnc{name}, {gb} GB)"
        ) in printed
        assert f"budget {float(gb)} GiB, nnU-Net ResEnc preset {name}" in printed  # the command's summary
        readme = (planned[gb]["bundle"] / "docs" / "README.md").read_text()
        assert "ResEnc preset by GPU memory" in readme and "memory_gib_at_batch" in readme


def test_bundles_rerender(planned: dict[int, Any], capsys: pytest.CaptureFixture[str]) -> None:
    bundles = [str(planned[gb]["bundle"]) for gb in PRESETS]
    for bundle in bundles:
        assert check_bundle(bundle) == []
    assert main(["bundle", "check", *bundles]) == 0
    assert capsys.readouterr().out.count(": ok (every generated file matches plans/plan.json)") == len(
        bundles
    )


def test_planned_network_builds(planned: dict[int, Any]) -> None:
    """The rendered ``network_def`` builds: at full size on the meta device (logits of the patch's
    shape), and at an eighth of the width on the CPU, which runs a patch."""
    import torch
    from monai.bundle import ConfigParser

    from medseg.networks import ResidualEncoderUNet

    for gb in PRESETS:
        bundle, plan = planned[gb]["bundle"], planned[gb]["plan"]
        patch, config = _value(plan, "patch_size"), _value(plan, "network")
        shape = (1, config["in_channels"], *patch)
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "train.json"))
        with torch.device("meta"):
            network = parser.get_parsed_content("network_def")
            logits = network(torch.empty(shape))
        assert isinstance(network, ResidualEncoderUNet)
        assert logits.shape == (1, len(plan["inputs"]["dataset"]["labels"]), *patch)
        options = {k: v for k, v in config.items() if k != "_target_"}
        tiny = ResidualEncoderUNet(**{**options, "channels": [c // 8 for c in options["channels"]]}).eval()
        with torch.no_grad():
            assert tiny(torch.randn(shape)).shape == logits.shape


def test_other_networks_keep_nnunets_default_planner(planned: dict[int, Any]) -> None:
    """``--network unet`` on a GPU: no preset, nnU-Net's default planner's 5 % batch cap."""
    fingerprint = json.loads((planned[24]["bundle"] / FINGERPRINT_FILE).read_text())
    plan = make_plan(fingerprint, network="unet", target="gpu", gpu_memory_gb=24)
    assert "preset" not in _value(plan, "compute") and "preset" not in plan["values"]["compute"]["data"]
    assert "cap_for_5_percent" in plan["values"]["batch_size"]["data"]
    assert _value(plan, "batch_size") <= plan["values"]["batch_size"]["data"]["cap_for_5_percent"]


def test_gpu_options_of_the_command(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = str(shared_data / DATASETS["hippocampus"])
    bundle = str(tmp_path / "bundle")
    assert main(["plan", dataset, "-o", bundle, "--target", "cpu", "--gpu-memory-gb", "24"]) != 0
    assert "--gpu-memory-gb plans for a GPU but --target is cpu" in capsys.readouterr().err
    assert main(["plan", dataset, "-o", bundle, "--target", "cpu", "--gpu"]) != 0
    assert "drop one of them" in capsys.readouterr().err
    assert not (tmp_path / "bundle").exists()
