"""Interactive bundles (medseg.render.interactive): medseg plan --interactive renders a DeepEdit-style bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.cli.main import main
from medseg.render import check_bundle

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[2]
DEEPEDIT = "monai.apps.deepedit."


@pytest.fixture
def planned(msd_copy, tmp_path) -> tuple[Path, Path]:
    dataset = msd_copy(count=10)
    bundle = tmp_path / "interactive"
    assert main(["plan", str(dataset), "--interactive", "--output", str(bundle), "--target", "cpu"]) == 0
    return dataset, bundle


def _config(bundle: Path, name: str) -> dict:
    return json.loads((bundle / "configs" / f"{name}.json").read_text())


def test_interactive_plan_renders_guidance_channels_and_simulated_clicks(planned):
    _, bundle = planned
    train, inference, metadata = (_config(bundle, n) for n in ("train", "inference", "metadata"))
    names = {"Anterior": 1, "Posterior": 2, "background": 0}
    assert metadata["interactive"]["label_names"] == names and train["label_names"] == names
    assert train["network_def"]["in_channels"] == inference["network_def"]["in_channels"] == 1 + 3
    targets = [t["_target_"] for t in train["train"]["random_transforms"]]
    for name in (
        "FindAllValidSlicesMissingLabelsd",
        "AddInitialSeedPointMissingLabelsd",
        "AddGuidanceSignalDeepEditd",
    ):
        assert DEEPEDIT + "transforms." + name in targets
    assert train["train"]["trainer"]["iteration_update"] == "@train#interaction"
    assert train["train"]["interaction"]["_target_"] == DEEPEDIT + "interaction.Interaction"
    clicks = [t["_target_"] for t in train["train"]["click_transforms"]["transforms"]]
    assert DEEPEDIT + "transforms.FindDiscrepancyRegionsDeepEditd" in clicks
    assert DEEPEDIT + "transforms.AddRandomGuidanceDeepEditd" in clicks
    assert inference["preprocessing"]["transforms"][-1]["_target_"] == "medseg.interactive.AddClickGuidanced"
    assert train["test_fold"] == 0 and train["batch_size"] == 1
    assert json.loads((bundle / "plans" / "plan.json").read_text())["inputs"]["interactive"] is True
    assert check_bundle(bundle) == []  # the plan re-renders with the interactive template


@pytest.mark.slow
def test_interactive_bundle_trains_segments_and_takes_clicks(planned, tmp_path):
    """One short training, then the automatic mode (segment) and the click protocol run on it."""
    import nibabel as nib

    dataset, bundle = planned
    assert main(["train", str(bundle), "--data", str(dataset), "--epochs", "1", "--no-progress"]) == 0
    out = tmp_path / "seg"
    image = sorted((dataset / "imagesTr").iterdir())[0]
    assert main(["segment", str(image), "--bundle", str(bundle), "--output", str(out), "--force"]) == 0
    assert nib.load(out / "segmentation.nii.gz").shape == nib.load(image).shape
    metrics = tmp_path / "clicks.json"
    assert (
        main(
            ["evaluate", str(bundle), "--data", str(dataset), "--clicks", "0", "2", "--output", str(metrics)]
        )
        == 0
    )
    result = json.loads(metrics.read_text())
    assert result["fold"] == 0 and result["cases"] == 2 and set(result["per_case"]) == {"0", "2"}
    assert 0.0 <= result["metrics"]["mean_dice_clicks_2"] <= 1.0


def test_plain_plan_stays_plain(msd_copy, tmp_path):
    bundle = tmp_path / "plain"
    assert main(["plan", str(msd_copy(count=10)), "--output", str(bundle), "--target", "cpu"]) == 0
    assert "interactive" not in _config(bundle, "metadata")
    assert _config(bundle, "train")["network_def"]["in_channels"] == 1


@pytest.mark.parametrize("name", ["hippocampus_interactive", "left_atrium_interactive"])
def test_shipped_interactive_bundle_renders_from_its_plan(name):
    assert check_bundle(REPO / "bundles" / name) == []
