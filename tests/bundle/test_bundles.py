"""The shipped MONAI bundles: structure, metadata, plain `monai.bundle` runs, evaluation, export, DDP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from support.monai_bundle import INFERENCE_KEYS, monai_bundle, verify_net_in_out

from medseg.bundle import REQUIRED_FILES, evaluate_bundle, export_bundle, open_bundle
from medseg.bundle.loader import is_ensemble, weight_files
from medseg.data import split_folds
from medseg.data.dataset import load_datalist
from medseg.render import check_bundle, generated_from

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
ENSEMBLES = [name for name in BUNDLES if is_ensemble(open_bundle(REPO / "bundles" / name))]
TRAINED = [
    name
    for name in BUNDLES
    if all(path.is_file() for path in weight_files(open_bundle(REPO / "bundles" / name)))
]
PLANNED = [name for name in BUNDLES if generated_from(REPO / "bundles" / name) is not None]
# The fold-0 (test fold) mean Dice each shipped model must reach, trained under the test-fold rule.
REQUIRED_MEAN_DICE = {
    "hippocampus_unet3d": 0.88,
    "hippocampus_unet3d_large": 0.88,  # the 3D U-Net's bar
    "hippocampus_deeplab3d": 0.87,
    "hippocampus_interactive": 0.86,  # without clicks (its automatic mode); clicks: tests/interactive
    "hippocampus_unet2d": 0.86,
    "left_atrium_unet3d": 0.88,
    "left_atrium_interactive": 0.87,  # without clicks (its automatic mode); clicks: tests/interactive
    "hippocampus_ensemble": 0.892,  # above nnU-Net's 5-fold CV 0.889 on MSD Task04
    "left_atrium_ensemble": 0.88,  # the left atrium's bar, as for its single 3D U-Net
}
TEST_FOLD = 0

# Keys the MONAI bundle metadata schema requires (verify_metadata needs the schema from the internet).
REQUIRED_META = [
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
]
REQUIRED_FORMAT = ["type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "channel_def"]


def _train_parser(name: str) -> ConfigParser:
    """The bundle's own train.json, resolved as `monai.bundle run` resolves it from its folder."""
    parser = ConfigParser()
    parser.read_config(REPO / "bundles" / name / "configs" / "train.json")
    parser["bundle_root"] = str(REPO / "bundles" / name)
    return parser


def _test_cases(name: str) -> list[dict]:
    """The fold-0 cases of the bundle's dataset (sorted case ids, index % 5 == 0)."""
    dataset_dir = _train_parser(name).get_parsed_content("dataset_dir")
    return split_folds(load_datalist(dataset_dir), TEST_FOLD)


def _labels(name: str) -> dict[int, str]:
    pred = open_bundle(REPO / "bundles" / name).metadata["network_data_format"]["outputs"]["pred"]
    return {int(k): v for k, v in pred["channel_def"].items()}


@pytest.mark.parametrize("name", BUNDLES)
def test_bundle_layout_and_metadata(name: str) -> None:
    bundle = open_bundle(REPO / "bundles" / name)
    for rel in REQUIRED_FILES:
        assert (bundle.root / rel).is_file(), f"{name} lacks {rel}"
    meta = bundle.metadata
    for key in REQUIRED_META:
        assert key in meta, f"{name} metadata lacks {key}"
    assert meta["version"] in meta["changelog"]
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    for fmt in (image, pred):
        for key in REQUIRED_FORMAT:
            assert key in fmt, f"{name} network_data_format lacks {key}"
    assert image["modality"] == "MR"
    assert pred["num_channels"] == len(pred["channel_def"]) >= 2
    assert pred["channel_def"]["0"] == "background"
    assert "research use only" in meta["intended_use"].lower()
    for config in ("train.json", "evaluate.json", "inference.json", "multi_gpu_train.json"):
        text = (bundle.root / "configs" / config).read_text()
        json.loads(text)
    inference = json.loads((bundle.root / "configs" / "inference.json").read_text())
    for key in INFERENCE_KEYS:
        assert key in inference, f"{name} inference.json lacks {key}"
    if name in ENSEMBLES:  # one weights file per member, loaded by network_def
        assert inference["network_def"]["_target_"] == "medseg.ensemble.EnsembleNetwork"
        members = [m["network"]["_target_"] for m in inference["members"] for _ in m["weights"]]
        assert len(members) >= 2 and all(t.startswith("medseg.networks.") for t in members)
    else:
        assert "checkpointloader" in inference, f"{name} inference.json lacks checkpointloader"
        assert inference["network_def"]["_target_"].startswith("medseg.networks.")
    assert "@datalist" in inference["dataset"]["data"]


@pytest.mark.parametrize("name", BUNDLES)
def test_no_test_fold_case_in_training_or_validation(name: str) -> None:
    """Test-fold rule: no fold-0 case is trained on or validated on (no decision looks at fold 0)."""
    parser = _train_parser(name)
    test_images = {os.path.realpath(case["image"]) for case in _test_cases(name)}
    assert test_images
    for key in ("train_datalist", "val_datalist"):
        used = {os.path.realpath(case["image"]) for case in parser.get_parsed_content(key)}
        assert used, f"{name} {key} is empty"
        leaked = sorted(test_images & used)
        assert not leaked, f"{name} {key} holds {len(leaked)} fold-0 cases, e.g. {leaked[0]}"


@pytest.mark.parametrize("name", PLANNED)
def test_planned_bundle_rerenders_exactly(name: str) -> None:
    """A generated bundle is exactly what its plans/ folder renders (no hand edits)."""
    assert check_bundle(REPO / "bundles" / name) == []


@pytest.mark.parametrize("name", BUNDLES)
def test_verify_net_in_out(name: str) -> None:
    root = REPO / "bundles" / name
    verify_net_in_out(root)


@pytest.mark.parametrize("name", TRAINED)
def test_weights_are_a_small_state_dict(name: str) -> None:
    for path in weight_files(open_bundle(REPO / "bundles" / name)):  # an ensemble: one per member
        assert path.stat().st_size <= 25 * 1024 * 1024
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
        assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.mark.parametrize("name", TRAINED)
def test_plain_monai_inference_on_a_chosen_datalist(name: str, tmp_path: Path) -> None:
    """`python -m monai.bundle run` with only `datalist` overridden segments exactly those images."""
    cases = _test_cases(name)[:2]  # two test-fold cases
    chosen = [str(case["image"]) for case in cases]
    foreground = [value for value in _labels(name) if value != 0]
    monai_bundle(
        REPO / "bundles" / name, "run", "--config_file", "configs/inference.json", "--bundle_root", ".",
        "--output_dir", str(tmp_path), "--datalist", json.dumps(chosen),
    )  # fmt: skip
    outputs = sorted(tmp_path.rglob("*.nii.gz"))
    assert len(outputs) == 2
    for case, out_path in zip(cases, outputs, strict=True):
        image_path = str(case["image"])
        assert out_path.name.startswith(Path(image_path).name.split(".")[0])
        image = nib.load(image_path)
        seg = nib.load(out_path)
        assert seg.shape == image.shape
        np.testing.assert_allclose(seg.affine, image.affine, atol=1e-4)
        label = nib.load(str(case["label"])).get_fdata().round()
        pred = seg.get_fdata().round()
        assert set(np.unique(pred)) <= {0, *foreground}
        for cls in foreground:
            dice = 2 * np.sum((pred == cls) & (label == cls)) / (np.sum(pred == cls) + np.sum(label == cls))
            assert dice > 0.7, f"{name} class {cls} Dice {dice:.3f} on {Path(image_path).name}"


# Shipped models measured below their floor (each with what it takes to reach it).
BELOW_FLOOR: dict[str, str] = {}


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=BELOW_FLOOR[name]))
        if name in BELOW_FLOOR
        else name
        for name in TRAINED
    ],
)
def test_evaluate_reproduces_documented_dice(name: str, tmp_path: Path) -> None:
    bundle = open_bundle(REPO / "bundles" / name)
    documented = bundle.metadata["eval_metrics"]
    result = evaluate_bundle(bundle, fold=TEST_FOLD, output=tmp_path / "metrics.json")
    assert result["fold"] == TEST_FOLD
    assert result["cases"] == len(_test_cases(name))
    metrics = result["metrics"]
    assert metrics["val_mean_dice"] == pytest.approx(documented["mean_dice"], abs=2e-3)
    assert metrics["val_mean_dice"] >= REQUIRED_MEAN_DICE[name]
    dice_keys = [key for key in documented if key.startswith("dice_")]
    assert len(dice_keys) == len(_labels(name)) - 1
    for key in dice_keys:
        assert metrics[f"val_{key}"] == pytest.approx(documented[key], abs=2e-3), key
    readme = (bundle.root / "docs" / "README.md").read_text()
    assert f"{documented['mean_dice']:.4f}" in readme
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == metrics


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", [name for name in TRAINED if name not in ENSEMBLES])
def test_export_matches_eager(name: str, fmt: str, tmp_path: Path) -> None:
    suffix = ".ts" if fmt == "torchscript" else ".onnx"
    result = export_bundle(open_bundle(REPO / "bundles" / name), fmt, tmp_path / f"model{suffix}")
    assert Path(result["path"]).is_file()
    # fp32 rounding relative to the largest logit (medseg.bundle.export.export_tolerance); logits stay below 50
    assert result["max_abs_diff"] <= result["tolerance"] <= 5e-3
