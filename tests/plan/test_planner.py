"""Planning rules (medseg.plan.planner): nnU-Net's rules, the CPU budget, and the hand-made recipe."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from medseg.data.dataset import open_dataset
from medseg.errors import ConfigError
from medseg.plan.fingerprint import extract_fingerprint
from medseg.plan.planner import explain, get_pool_and_conv_props, make_plan, target_spacing

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def hippocampus_fp(hippocampus_dir):
    return extract_fingerprint(open_dataset(hippocampus_dir), workers=2, progress=False)


def _values(plan):
    return {key: entry["value"] for key, entry in plan["values"].items()}


def test_pool_and_conv_props_isotropic():
    topo = get_pool_and_conv_props([1.0, 1.0, 1.0], [35, 50, 36])
    assert topo.pools_per_axis == (3, 3, 3) and topo.patch_size == (40, 56, 40)
    assert topo.strides == ((2, 2, 2),) * 3


def test_pool_and_conv_props_anisotropic():
    topo = get_pool_and_conv_props([0.8, 0.8, 4.0], [256, 256, 24])
    assert topo.pools_per_axis[2] < topo.pools_per_axis[0]
    assert topo.strides[0] == (2, 2, 1)  # the coarse axis waits until the others catch up
    assert all(p % d == 0 for p, d in zip(topo.patch_size, topo.divisor, strict=True))


def test_target_spacing_anisotropy_rule():
    rng = np.random.default_rng(0)
    spacings = np.column_stack([np.full(20, 0.8), np.full(20, 0.8), rng.choice([3.0, 5.0, 6.0], 20)])
    shapes = np.tile([256, 256, 30], (20, 1))
    spacing, rule, data = target_spacing(spacings, shapes)
    assert spacing[:2] == [0.8, 0.8] and spacing[2] == pytest.approx(np.percentile(spacings[:, 2], 10))
    assert "anisotropic" in rule and data["anisotropic_axis"] == 2
    spacing, rule, _ = target_spacing(np.tile([1.0, 1.0, 1.2], (5, 1)), np.tile([50, 50, 40], (5, 1)))
    assert spacing == [1.0, 1.0, 1.2] and "anisotropic" not in rule


def test_hippocampus_cpu_plan_matches_recipe(hippocampus_fp):
    """The CPU plan for MSD hippocampus reproduces the measured hand-made hippocampus_unet3d recipe."""
    plan = make_plan(hippocampus_fp, network="unet", dims=3, target="cpu", cpu_cores=2)
    values = _values(plan)
    recipe = json.loads((REPO / "bundles" / "hippocampus_unet3d" / "configs" / "train.json").read_text())
    network = values["network"]
    for key in ("channels", "strides", "num_res_units"):
        assert network[key] == recipe["network_def"][key], key
    assert network["_target_"] == recipe["network_def"]["_target_"]
    assert values["patch_size"] == recipe["roi_size"]
    assert values["batch_size"] == recipe["batch_size"]
    spacing = next(t for t in recipe["train"]["deterministic_transforms"] if t["_target_"] == "Spacingd")
    assert values["target_spacing"] == spacing["pixdim"]
    assert values["normalization"] == [{"channel": "MRI", "scheme": "zscore", "nonzero": False}]
    assert values["loss"]["name"] == recipe["loss"]["name"] and values["loss"]["batch"]
    assert values["training"]["learning_rate"] == recipe["learning_rate"]
    assert values["training"]["ema_decay"] == recipe["ema_decay"]
    # the shipped bundle records the rule's epoch count; its overrides.json may only shorten it
    shipped = json.loads((REPO / "bundles" / "hippocampus_unet3d" / "plans" / "plan.json").read_text())
    training = shipped["values"]["training"]
    planned = training["data"].get("planned", training)["value"]
    assert 100 <= values["training"]["max_epochs"] == planned["max_epochs"]
    assert recipe["max_epochs"] == training["value"]["max_epochs"] <= planned["max_epochs"]
    assert values["training"]["train_folds"] == [2, 3, 4] and values["training"]["val_fold"] == 1
    assert values["training"]["test_fold"] == 0
    assert values["inference"]["roi_size"] == recipe["roi_size"]
    limits = values["suitability"]
    metadata = json.loads((REPO / "bundles" / "hippocampus_unet3d" / "configs" / "metadata.json").read_text())
    image = metadata["network_data_format"]["inputs"]["image"]
    assert limits["plausible_extent_mm"] == image["plausible_extent_mm"]
    assert limits["plausible_spacing_mm"] == image["plausible_spacing_mm"]
    assert limits["modality"] == image["modality"] and limits["num_channels"] == 1
    # where the rules differ from the recipe, the rule says why
    assert values["augmentation"]["mirror_axes"] == []
    assert "mirrors anyway records that as an override" in plan["values"]["augmentation"]["rule"]
    assert "did not fit" in plan["values"]["network"]["rule"]  # the nnU-Net width is too slow on CPU
    for entry in plan["values"].values():
        assert entry["rule"]


def test_hippocampus_gpu_plan_is_nnunet(hippocampus_fp):
    """MONAI's U-Net on a GPU is planned as nnU-Net's default planner plans its plain U-Net."""
    values = _values(make_plan(hippocampus_fp, network="unet", target="gpu"))
    assert values["network"]["channels"][0] == 32 and values["network"]["num_res_units"] == 2
    assert values["patch_size"] == [40, 56, 40]
    assert values["batch_size"] == 9  # nnU-Net v2's batch for Task04: capped at 5 % of the dataset
    assert values["compute"]["memory_gib"] <= values["compute"]["memory_gib_at_batch"] <= 8
    assert "preset" not in values["compute"]  # the ResEnc presets are the residual-encoder U-Net's


def test_hippocampus_2d_plan(hippocampus_fp):
    values = _values(make_plan(hippocampus_fp, dims=2, target="cpu", cpu_cores=2))
    assert values["slicing"]["slice_axis"] == 2 and values["patch_size"] == [40, 56]
    assert values["network"]["spatial_dims"] == 2 and len(values["augmentation"]["rotate_range"]) == 1


def test_tight_cpu_budget_chooses_lighter_network(hippocampus_fp):
    plan = make_plan(hippocampus_fp, target="cpu", cpu_cores=2, max_minutes=3)
    values = _values(plan)
    assert values["network"]["channels"][0] == 8
    assert "light" in plan["values"]["compute"]["rule"] and "did not fit" in plan["values"]["compute"]["rule"]


@pytest.mark.parametrize("network", ["deeplabv3plus", "fcn", "segnet", "pspnet"])
def test_other_networks_plan_and_build(hippocampus_fp, network):
    import torch

    import medseg.networks as networks

    values = _values(make_plan(hippocampus_fp, network=network, target="cpu", cpu_cores=2))
    config = dict(values["network"])
    cls = getattr(networks, config.pop("_target_").rsplit(".", 1)[-1])
    net = cls(**config)
    with torch.no_grad():
        out = net(torch.zeros(1, 1, *values["patch_size"]))
    assert out.shape == (1, 3, *values["patch_size"])


def test_rare_class_gets_weights(hippocampus_fp):
    fp = copy.deepcopy(hippocampus_fp)
    fp["label_fraction"] = {"0": 0.9989, "1": 0.001, "2": 0.0001}
    loss = _values(make_plan(fp, target="gpu"))["loss"]
    assert loss["class_weights"][0] == 1.0 and 1 < loss["class_weights"][1] < loss["class_weights"][2] <= 10


def test_plan_overrides_and_explain(hippocampus_fp):
    plan = make_plan(hippocampus_fp, target="gpu", overrides={"augmentation": {"mirror_axes": [0]}})
    entry = plan["values"]["augmentation"]
    assert entry["value"] == {"mirror_axes": [0]} and "override" in entry["rule"]
    assert entry["data"]["planned"]["value"]["mirror_axes"] == []
    text = explain(plan)
    assert "patch_size: [40, 56, 40]" in text and "    rule: " in text
    with pytest.raises(ConfigError, match="names no planned value"):
        make_plan(hippocampus_fp, target="gpu", overrides={"colour": 1})


def test_plan_is_deterministic(hippocampus_fp):
    one = make_plan(hippocampus_fp, target="cpu", cpu_cores=2)
    two = make_plan(hippocampus_fp, target="cpu", cpu_cores=2)
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


def test_bad_options(hippocampus_fp, kvasir_png):
    with pytest.raises(ConfigError, match="unknown network"):
        make_plan(hippocampus_fp, network="resnet")
    fp = extract_fingerprint(open_dataset(kvasir_png), workers=1, progress=False)
    with pytest.raises(ConfigError, match="--dims 3"):
        make_plan(fp, dims=3)


def test_rgb_png_plan(kvasir_png):
    fp = extract_fingerprint(open_dataset(kvasir_png), workers=1, progress=False)
    values = _values(make_plan(fp, target="cpu", cpu_cores=2))
    assert values["target_spacing"] == [1.0, 1.0]
    assert [c["scheme"] for c in values["normalization"]] == ["rgb_to_0_1"] * 3
    assert values["network"]["in_channels"] == 3 and values["network"]["out_channels"] == 2
    assert values["augmentation"]["mirror_axes"] == [0, 1]
    assert "modality" not in values["suitability"]


@pytest.mark.slow
def test_left_atrium_plan(shared_data):
    fp = extract_fingerprint(open_dataset(shared_data / "la2018-left-atrium"), workers=2, progress=False)
    plan = make_plan(fp, target="cpu", cpu_cores=2)
    values = _values(plan)
    assert values["target_spacing"] == [1.25, 1.25, 1.25]
    assert values["augmentation"]["mirror_axes"] == []  # orientation unknown: no left/right reasoning
    assert values["suitability"]["modality"] == "MR"
    assert all(
        p >= m / 2
        for p, m in zip(
            values["patch_size"], plan["values"]["patch_size"]["data"]["median_shape"], strict=True
        )
    )


def test_field_override_keeps_planned_value(hippocampus_fp):
    plan = make_plan(
        hippocampus_fp,
        target="cpu",
        cpu_cores=2,
        overrides={"augmentation.mirror_axes": [0], "suitability.tta_flip_axes": [0]},
    )
    aug = plan["values"]["augmentation"]
    assert aug["value"]["mirror_axes"] == [0] and aug["value"]["affine_prob"] == 0.3
    assert aug["data"]["planned"]["value"]["mirror_axes"] == [] and "mirrored only when" in aug["rule"]
    assert plan["values"]["suitability"]["value"]["tta_flip_axes"] == [0]
    with pytest.raises(ConfigError, match="no field"):
        make_plan(hippocampus_fp, target="gpu", overrides={"augmentation.colour": 1})


def test_grey_png_plan(hippocampus_png):
    fp = extract_fingerprint(open_dataset(hippocampus_png), workers=1, progress=False)
    values = _values(make_plan(fp, target="cpu", cpu_cores=2))
    assert values["normalization"][0]["scheme"] == "zscore" and values["network"]["in_channels"] == 1
    assert values["network"]["spatial_dims"] == 2 and len(values["patch_size"]) == 2
    assert values["slicing"] is None


def test_input_overrides_name_labels_codes_and_metadata(hippocampus_fp):
    codes = {
        "1": {"type": ["5366008", "SCT", "Hippocampus"], "modifiers": [["255549009", "SCT", "Anterior"]]}
    }
    plan = make_plan(
        hippocampus_fp,
        target="cpu",
        cpu_cores=2,
        overrides={
            "labels": {"0": "background", "1": "anterior hippocampus", "2": "posterior hippocampus"},
            "concepts": codes,
            "metadata": {"task": "hippocampus halves"},
        },
    )
    inputs = plan["inputs"]
    assert inputs["dataset"]["labels"]["1"] == "anterior hippocampus"
    assert inputs["concepts"] == codes and inputs["metadata"] == {"task": "hippocampus halves"}
    assert inputs["versions"]["monai"] and inputs["versions"]["torch"]
    with pytest.raises(ConfigError, match="every label value"):
        make_plan(hippocampus_fp, target="gpu", overrides={"labels": {"0": "background", "1": "a"}})
    with pytest.raises(ConfigError, match="may set only"):
        make_plan(hippocampus_fp, target="gpu", overrides={"metadata": {"version": "9.9.9"}})


def test_override_reason_joins_the_rule(hippocampus_fp):
    plan = make_plan(
        hippocampus_fp,
        target="cpu",
        cpu_cores=2,
        overrides={"training.max_epochs": 80, "why": {"training.max_epochs": "the machine was shared"}},
    )
    entry = plan["values"]["training"]
    assert (
        entry["value"]["max_epochs"] == 80
        and "(training.max_epochs: the machine was shared)" in entry["rule"]
    )
    assert entry["data"]["planned"]["value"]["max_epochs"] > 80
    with pytest.raises(ConfigError, match="not overridden"):
        make_plan(hippocampus_fp, target="gpu", overrides={"why": {"batch_size": "no"}})
