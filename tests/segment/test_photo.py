"""Photographs end to end (medseg.segment.photo): plan a JPEG dataset, train briefly, segment a JPEG.

Real Kvasir-SEG colonoscopy photos of varying sizes (the development split, linked, never copied):
the plan resizes them to a planned square target size (a budget too small for the full
resolution), and ``medseg segment`` writes a PNG label map on each photograph's own size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.cli.main import main
from medseg.errors import BundleError, InputError

pytestmark = pytest.mark.needs_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    """A 5-photo JPEG dataset, planned for 6 CPU seconds (so coarser than full resolution), 1 epoch."""
    from support.datasets import write_kvasir_dev

    root = tmp_path_factory.mktemp("photos")
    dataset = write_kvasir_dev(shared_data / "kvasir-seg-dev", root / "kvasir", count=5)
    bundle = root / "bundle"
    assert main(["plan", str(dataset), "--dims", "2", "--output", str(bundle), "--max-minutes", "0.1"]) == 0
    assert main(["train", str(bundle), "--data", str(dataset), "--epochs", "1"]) == 0
    return dataset, bundle


@pytest.mark.slow
def test_jpeg_plan_trains_and_segments_on_own_size(trained, tmp_path):
    from PIL import Image

    dataset, bundle = trained
    plan = json.loads((bundle / "plans" / "plan.json").read_text())
    resolution = plan["values"]["resolution"]
    size = resolution["value"]["target_size"]
    assert resolution["value"]["scale"] < 1 and size is not None and size[0] == size[1]
    assert resolution["data"]["candidates"][0]["views"] < resolution["data"]["needed_views"]
    train = json.loads((bundle / "configs" / "train.json").read_text())
    resize = [t for t in train["train"]["deterministic_transforms"] if t["_target_"] == "Resized"]
    assert resize and resize[0]["spatial_size"] == size and resize[0]["mode"] == ["bilinear", "nearest"]

    images = sorted((dataset / "imagesTr").glob("*.jpg"))
    sizes = {Image.open(p).size for p in images}
    assert len(sizes) > 1  # the photos differ in size
    photo = images[0]
    out = tmp_path / "out"
    assert main(["segment", str(photo), "--bundle", str(bundle), "--output", str(out)]) == 0
    with Image.open(photo) as original, Image.open(out / "segmentation.png") as label:
        assert label.size == original.size and label.mode == "L"
        values = set(np.unique(np.asarray(label)).tolist())
    assert values <= {0, 1}
    with Image.open(out / "overlay.png") as overlay:
        assert overlay.size == Image.open(photo).size and overlay.mode == "RGB"
    report = json.loads((out / "report.json").read_text())
    assert report["labels"][0]["name"] == "polyp" and report["input"]["size"] == list(Image.open(photo).size)


@pytest.mark.slow
def test_evaluate_scores_on_each_photos_own_size(trained, tmp_path):
    """evaluate.json resizes only the image: the label keeps the photograph's size, the prediction goes back to it."""
    dataset, bundle = trained
    evaluate = json.loads((bundle / "configs" / "evaluate.json").read_text())
    steps = evaluate["validate#preprocessing"]["transforms"]
    (resize,) = [t for t in steps if t["_target_"] == "Resized"]
    assert resize["keys"] == "image"
    invert = evaluate["validate#postprocessing"]["transforms"][1]
    assert invert["_target_"] == "Invertd" and invert["keys"] == ["pred"]
    metrics = tmp_path / "metrics.json"
    command = ["evaluate", str(bundle), "--data", str(dataset), "--fold", "0", "--output", str(metrics)]
    assert main([*command, "--precision", "fp32"]) == 0
    dice = json.loads(metrics.read_text())["metrics"]["val_mean_dice"]
    # the same figure from medseg segment's PNG labels against the original masks, in numpy
    from PIL import Image

    from medseg.data.datalist import split_folds
    from medseg.data.dataset import load_datalist
    from medseg.segment.photo import segment_photo

    scores = []
    for item in split_folds(load_datalist(dataset), 0):
        predicted = segment_photo(item["image"], bundle, tmp_path / item["case_id"]).labels
        truth = np.asarray(Image.open(item["label"])) > 0
        assert predicted.shape == truth.shape
        both = (predicted > 0).sum() + truth.sum()
        scores.append(2 * np.logical_and(predicted > 0, truth).sum() / both if both else 1.0)
    assert dice == pytest.approx(float(np.mean(scores)), abs=0.01)


def test_volume_bundle_refuses_a_photograph(shared_data, tmp_path):
    from medseg.segment.photo import segment_photo

    photo = next((shared_data / "kvasir-seg-dev" / "images").glob("*.jpg"))
    repo = Path(__file__).resolve().parents[2]
    with pytest.raises(BundleError, match="not planned on photographs"):
        segment_photo(photo, repo / "bundles" / "hippocampus_unet3d", tmp_path / "out")
    with pytest.raises(InputError, match="not a photograph"):
        segment_photo(
            shared_data / "kvasir-seg-dev" / "dataset.json", repo / "bundles" / "hippocampus_unet3d", tmp_path
        )
    assert not (tmp_path / "out").exists()
