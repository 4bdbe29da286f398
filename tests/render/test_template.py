"""Bundle rendering (medseg.render.template): one template, complete bundles that MONAI and medseg run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.monai_bundle import INFERENCE_KEYS, monai_bundle, verify_net_in_out

from medseg.cli.main import main
from medseg.errors import BundleError
from medseg.render import BUNDLE_FILES, check_bundle, render_bundle
from medseg.render.records import RECORD_FILE, read_plan, read_record

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[2]


def _parsed(bundle: Path, dataset: Path, *keys: str) -> list:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser["dataset_dir"] = str(dataset)
    return [parser.get_parsed_content(key) for key in keys]


@pytest.fixture
def planned_msd(msd_copy, tmp_path) -> tuple[Path, Path]:
    dataset = msd_copy(count=10)
    bundle = tmp_path / "bundle"
    assert main(["plan", str(dataset), "--output", str(bundle), "--target", "cpu"]) == 0
    return dataset, bundle


def test_rendered_bundle_is_complete(planned_msd):
    dataset, bundle = planned_msd
    for relative in BUNDLE_FILES:
        assert (bundle / relative).is_file(), relative
    train = json.loads((bundle / "configs" / "train.json").read_text())
    for key in ("dataset_dir", "datalist", "train_datalist", "val_datalist", "device", "network_def", "run"):
        assert key in train, key
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    for key in (*INFERENCE_KEYS, "checkpointloader"):
        assert key in inference, key
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    fmt = metadata["network_data_format"]
    assert fmt["outputs"]["pred"]["num_channels"] == 3
    assert fmt["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "Anterior", "2": "Posterior"}
    assert fmt["inputs"]["image"]["modality"] == "MR" and fmt["inputs"]["image"]["num_channels"] == 1
    readme = (bundle / "docs" / "README.md").read_text()
    assert (
        "| `patch_size` |" in readme
        and "CC-BY-SA 4.0" in readme
        and "CC-BY-SA 4.0" in (bundle / "LICENSE").read_text()
    )


def test_no_test_fold_case_in_training_or_validation(planned_msd):
    from medseg.data import split_folds

    dataset, bundle = planned_msd
    datalist, train, val = _parsed(bundle, dataset, "datalist", "train_datalist", "val_datalist")
    test_ids = {item["case_id"] for item in split_folds(datalist, 0)}
    used = {item["case_id"] for item in train + val}
    assert test_ids and used and not test_ids & used
    assert len(train) + len(val) + len(test_ids) == len(datalist)


def test_bundle_check_finds_edits(planned_msd):
    _, bundle = planned_msd
    assert check_bundle(bundle) == []
    path = bundle / "configs" / "train.json"
    path.write_text(path.read_text().replace('"seed": 0', '"seed": 1'))
    assert check_bundle(bundle) == ["configs/train.json"]


def test_verify_net_in_out(planned_msd):
    _, bundle = planned_msd
    verify_net_in_out(bundle)


def test_png_bundle(kvasir_png, tmp_path):
    bundle = tmp_path / "polyps"
    assert main(["plan", str(kvasir_png), "--output", str(bundle), "--target", "cpu"]) == 0
    train = json.loads((bundle / "configs" / "train.json").read_text())
    load = train["train"]["deterministic_transforms"][0]
    assert load["reader"] == "PILReader"
    assert not any(
        t["_target_"] in ("Spacingd", "Orientationd") for t in train["train"]["deterministic_transforms"]
    )
    assert json.loads((bundle / "configs" / "inference.json").read_text())["output_ext"] == ".png"
    (image,) = _parsed(bundle, kvasir_png, "train_datalist")
    assert image and all(item["image"].endswith("_0000.png") for item in image)


def test_slice_network_bundle(msd_copy, tmp_path):
    """A 2-D network on 3-D images: random axial slices for training, MONAI's SliceInferer elsewhere."""
    dataset = msd_copy(count=10)
    bundle = tmp_path / "slices"
    assert main(["plan", str(dataset), "--output", str(bundle), "--dims", "2", "--target", "cpu"]) == 0
    train = json.loads((bundle / "configs" / "train.json").read_text())
    targets = [t["_target_"] for t in train["train"]["random_transforms"]]
    assert "RandSpatialCropSamplesd" in targets and "SqueezeDimd" in targets
    assert train["validate"]["inferer"]["_target_"] == "SliceInferer" and train["slices_per_volume"] == 8
    assert train["network_def"]["spatial_dims"] == 2
    verify_net_in_out(bundle)


def test_existing_bundle_files_are_not_replaced(msd_copy, tmp_path):
    bundle = tmp_path / "shipped"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "train.json").write_text("{}")
    assert main(["plan", str(msd_copy()), "--output", str(bundle)]) != 0
    assert (bundle / "configs" / "train.json").read_text() == "{}" and not (bundle / "plans").exists()


@pytest.mark.slow
def test_rendered_bundle_trains_and_evaluates(planned_msd, tmp_path):
    """Two epochs with plain ``python -m monai.bundle run``, then ``medseg evaluate`` on the test fold."""
    dataset, bundle = planned_msd
    monai_bundle(
        bundle, "run", "--config_file", "configs/train.json", "--bundle_root", ".", "--dataset_dir", str(dataset),
        "--max_epochs", "2", "--val_interval", "1", "--progress", "False", timeout=900,
    )  # fmt: skip
    assert (bundle / "models" / "model.pt").is_file()
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(bundle), "--data", str(dataset), "--fold", "0", "--output", str(out)]) == 0
    assert "val_mean_dice" in json.loads(out.read_text())["metrics"]


ANTERIOR_CODES = {
    "1": {
        "category": ["91723000", "SCT", "Anatomical Structure"],
        "type": ["5366008", "SCT", "Hippocampus"],
        "modifiers": [["255549009", "SCT", "Anterior"]],
    }
}


def test_concepts_from_file_reach_the_segment_codes(msd_copy, tmp_path):
    from medseg.io.seg_concepts import segment_specs

    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps(ANTERIOR_CODES))
    bundle = tmp_path / "coded"
    assert (
        main(["plan", str(msd_copy()), "-o", str(bundle), "--target", "cpu", "--concepts", str(concepts)])
        == 0
    )
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["segment_codes"] == ANTERIOR_CODES
    specs = segment_specs({0: "background", 1: "Anterior", 2: "Posterior"}, metadata)
    assert specs[0].type.value == "5366008" and [m.value for m in specs[0].modifiers] == ["255549009"]


def test_concepts_block_of_dataset_json(msd_copy, tmp_path):
    dataset = msd_copy()
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["concepts"] = ANTERIOR_CODES
    (dataset / "dataset.json").write_text(json.dumps(meta))
    bundle = tmp_path / "coded"
    assert main(["plan", str(dataset), "-o", str(bundle), "--target", "cpu"]) == 0
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["segment_codes"] == ANTERIOR_CODES


def test_concepts_of_an_unknown_label_are_refused(msd_copy, tmp_path, capsys):
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps({"7": ANTERIOR_CODES["1"]}))
    bundle = tmp_path / "coded"
    assert main(["plan", str(msd_copy()), "-o", str(bundle), "--concepts", str(concepts)]) != 0
    assert "'7'" in capsys.readouterr().err and not bundle.exists()


def test_training_record_renders_into_metadata_and_readme(planned_msd):
    _, bundle = planned_msd
    record = {
        "version": "0.2.0",
        "changelog": {"0.2.0": "trained", "0.1.0": "generated by medseg plan"},
        "command": "python -m monai.bundle run --config_file configs/train.json --bundle_root .",
        "epochs": 3,
        "wall_minutes": 1.25,
        "machine": "a test machine",
        "test_cases": 2,
        "dice": {"Anterior": 0.5, "Posterior": 0.25},
        "mean_dice": 0.375,
        "eval_metrics": {"mean_dice": 0.375, "dice_anterior": 0.5, "dice_posterior": 0.25},
    }
    (bundle / RECORD_FILE).write_text(json.dumps(record))
    assert check_bundle(bundle) == ["configs/metadata.json", "docs/README.md"]  # rendered without it
    render_bundle(read_plan(bundle), bundle, record=read_record(bundle))
    assert check_bundle(bundle) == []
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["version"] == "0.2.0" and metadata["eval_metrics"]["mean_dice"] == 0.375
    readme = (bundle / "docs" / "README.md").read_text()
    assert "**0.3750**" in readme and "1.2 minutes" in readme and "a test machine" in readme
    planned_epochs = read_plan(bundle)["training"]["max_epochs"]
    assert planned_epochs != 3  # the README says both: the planned schedule and the recorded run
    assert f"planned for {planned_epochs} epochs (the shipped weights trained 3:" in readme
    del record["machine"]
    (bundle / RECORD_FILE).write_text(json.dumps(record))
    with pytest.raises(BundleError, match="lacks machine"):
        check_bundle(bundle)
