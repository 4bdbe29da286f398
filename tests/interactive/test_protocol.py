"""The click protocol (medseg.interactive.protocol): where the simulated user clicks, and the figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.bundle import open_bundle
from medseg.cli.main import main
from medseg.errors import BundleError
from medseg.interactive.protocol import evaluate_clicks, next_click, run_protocol

pytestmark = pytest.mark.needs_data

NAMES = {0: "background", 1: "anterior", 2: "posterior"}
# Each shipped interactive bundle: its fold-0 (test fold) case count and the targets,
# fold-0 mean Dice after k clicks ({k: floor}; 0 clicks is the automatic mode).
SHIPPED = {
    "hippocampus_interactive": (52, {0: 0.86}),
    "left_atrium_interactive": (16, {0: 0.87, 5: 0.93}),
}
# Shipped bundles whose documented figures miss a target (each with what it measured and why).
BELOW_TARGET = {
    "left_atrium_interactive": "0.9006 after 5 clicks (target 0.93): 11 epochs of click training in the "
    "35-minute CPU budget leave the guidance channels' weights small, so a click moves the mask only near it",
}


def _label(hippocampus_dir, case="hippocampus_001"):
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True)(hippocampus_dir / "labelsTr" / f"{case}.nii.gz")).astype(
        np.int16
    )


def test_click_goes_to_the_centre_of_the_largest_error(hippocampus_dir):
    label = _label(hippocampus_dir)
    assert next_click(label, label, NAMES) is None
    pred = label.copy()
    pred[label == 2] = 0  # the posterior part missed: the largest error
    pred[0, 0, 0] = 1  # and one wrong voxel
    name, point = next_click(pred, label, NAMES)
    assert name == "posterior" and label[tuple(point)] == 2
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(label == 2, 1))[1:-1, 1:-1, 1:-1]
    assert depth[tuple(point)] == depth.max()  # the voxel farthest from the region's border
    over = label.copy()
    over[label == 2] = 1  # posterior called anterior: the click says "posterior"
    assert next_click(over, label, NAMES)[0] == "posterior"
    assert not label[:5, :5, :5].any()
    extra = label.copy()
    extra[:5, :5, :5] = 2  # a false positive in the background: a background click at its centre
    assert next_click(extra, label, NAMES) == ("background", [2, 2, 2])


def test_clicks_accumulate_and_are_scored_after_each_count(hippocampus_dir):
    """An oracle that fixes the clicked label's error under each click: Dice rises to 1, clicks accumulate."""
    from scipy import ndimage

    label = _label(hippocampus_dir)
    start = label.copy()
    start[label == 2] = 0
    start[label == 1] = 2
    seen = []

    def predict(clicks):
        seen.append({k: [list(p) for p in v] for k, v in clicks.items()})
        pred = start.copy()
        for points in clicks.values():
            for p in points:
                regions, _ = ndimage.label(start != label)
                fixed = (regions == regions[tuple(p)]) & (label == label[tuple(p)])
                pred[fixed] = label[fixed]
        return pred

    scores = run_protocol(predict, label, NAMES, [0, 1, 3])
    assert scores[0] == [0.0, 0.0] and scores[3] == [1.0, 1.0]
    assert sum(len(v) for v in seen[2].values()) == 2  # the third prediction saw two clicks
    assert len(seen) == 3  # perfect after two clicks: no click is added, nothing re-predicted


def test_plain_bundle_refuses_clicks(msd_copy, tmp_path, capsys):
    dataset = msd_copy(count=5)
    with pytest.raises(BundleError, match="no guidance channels.*medseg plan DATASET --interactive"):
        evaluate_clicks(open_bundle("bundles/hippocampus_unet3d"), [0, 1], data_dir=dataset)
    assert main(["evaluate", "bundles/hippocampus_unet3d", "--data", str(dataset), "--clicks", "0", "1"]) != 0
    assert "--interactive" in capsys.readouterr().err


def _documented_clicks(name: str) -> dict:
    return json.loads((open_bundle(f"bundles/{name}").root / "plans" / "training.json").read_text())["clicks"]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=BELOW_TARGET[name]))
        if name in BELOW_TARGET
        else name
        for name in SHIPPED
    ],
)
def test_shipped_interactive_bundle_meets_its_targets(name):
    """The documented fold-0 click table reaches the issue's targets (reproduced by the slow test below)."""
    documented = _documented_clicks(name)["mean_dice"]
    for k, floor in SHIPPED[name][1].items():
        assert documented[str(k)] >= floor, f"{name}: {documented[str(k)]} after {k} clicks, target {floor}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHIPPED))
def test_shipped_interactive_bundle_reproduces_its_click_table(name, tmp_path, capsys):
    """medseg evaluate --clicks on the whole test fold gives the table its README documents."""
    bundle = open_bundle(f"bundles/{name}")
    documented = _documented_clicks(name)
    output = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                str(bundle.root),
                "--fold",
                "0",
                "--clicks",
                "0",
                "1",
                "3",
                "5",
                "--output",
                str(output),
            ]
        )
        == 0
    )
    result = json.loads(output.read_text())
    metrics = result["metrics"]
    assert result["cases"] == SHIPPED[name][0] and result["clicks"] == [0, 1, 3, 5]
    for k in ("0", "1", "3", "5"):
        assert metrics[f"mean_dice_clicks_{k}"] == pytest.approx(documented["mean_dice"][k], abs=2e-3)
        for label, value in documented["dice"][k].items():
            assert metrics[f"dice_clicks_{k}"][label] == pytest.approx(value, abs=2e-3)
    assert metrics["mean_dice_clicks_0"] >= SHIPPED[name][1][0]  # the floor without clicks
    assert metrics["mean_dice_clicks_5"] > metrics["mean_dice_clicks_0"]
    assert f"{documented['mean_dice']['5']:.4f}" in (bundle.root / "docs" / "README.md").read_text()
    assert "mean" in capsys.readouterr().out
