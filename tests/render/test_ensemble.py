"""The ensemble template (medseg.render.ensemble): each configuration written once, evaluate.json
building its network from inference.json, and the same members as the record lists."""

from __future__ import annotations

import json
from pathlib import Path

from medseg.render import EnsembleTemplate
from medseg.render.ensemble import compact_dump
from medseg.render.records import read_ensemble

ROOT = Path(__file__).resolve().parents[2] / "bundles" / "hippocampus_ensemble"


def test_each_configuration_is_written_once() -> None:
    files = EnsembleTemplate.from_bundle(ROOT).files()
    text = files["configs/inference.json"]
    assert len(text.splitlines()) < 250
    inference = json.loads(text)
    ensemble = read_ensemble(ROOT)
    assert [m["group"] for m in inference["members"]] == ensemble["configurations"]
    listed = [Path(w.split("'")[1]).name for m in inference["members"] for w in m["weights"].values()]
    assert listed == [Path(m["weights"]).name for m in ensemble["members"]]
    evaluate = json.loads(files["configs/evaluate.json"])
    assert "members" not in evaluate and "inference.json" in evaluate["ensemble_def"]["config_file"]


def test_compact_dump_is_the_same_json() -> None:
    payload = {"roi": [40, 56, 40], "names": ["a", "b"], "nested": [{"x": [1.5, None, True]}], "empty": []}
    text = compact_dump(payload)
    assert json.loads(text) == payload and '"roi": [40, 56, 40]' in text
    long = {"imports": [f"$import module_{i}" for i in range(10)]}
    assert json.loads(compact_dump(long)) == long and len(compact_dump(long).splitlines()) == 14


def test_evaluate_builds_the_members_of_inference_json() -> None:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "train.json"), str(ROOT / "configs" / "evaluate.json")])
    parser["bundle_root"] = str(ROOT)
    network = parser.get_parsed_content("ensemble_def")
    members = read_ensemble(ROOT)["members"]
    assert network.names == [f"{m['configuration']} fold {m['fold']}" for m in members]
    assert network.weight_files == [Path(m["weights"]).name for m in members]
    first, second = network.groups[0].members[:2]
    assert first is not second and first.state_dict().keys() == second.state_dict().keys()
