"""``medseg bundle check``: a planned bundle passes; an edited or missing generated file fails, named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg.cli.main import main

pytestmark = pytest.mark.needs_data


@pytest.fixture
def planned(hippocampus_slices, tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    assert main(["plan", str(hippocampus_slices(15)), "--output", str(bundle), "--target", "cpu"]) == 0
    return bundle


def test_a_rendered_bundle_passes(planned: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["bundle", "check", str(planned)]) == 0
    assert f"{planned}: ok" in capsys.readouterr().out


def test_an_edited_config_fails_and_names_the_file(planned: Path, tmp_path: Path, capsys) -> None:
    train = planned / "configs" / "train.json"
    config = json.loads(train.read_text())
    config["learning_rate"] = 0.1  # a hand edit a re-plan would silently undo
    train.write_text(json.dumps(config, indent=4) + "\n")
    (planned / "LICENSE").unlink()
    other = tmp_path / "other"
    assert (
        main(["plan", str(tmp_path / "hippocampus_slices"), "--output", str(other), "--target", "cpu"]) == 0
    )
    capsys.readouterr()

    assert main(["bundle", "check", str(other), str(planned), "--diff-lines", "400"]) == 1
    out = capsys.readouterr().out
    assert f"{other}: ok" in out
    assert f"{planned}: 2 generated file(s) differ from plans/plan.json: configs/train.json, LICENSE" in out
    assert "--- configs/train.json (in the bundle)" in out
    assert '-    "learning_rate": 0.1,' in out
    assert "--- LICENSE (missing)" in out
    assert "re-render with medseg plan" in out


def test_a_bundle_without_a_plan_is_reported_not_failed(planned: Path, tmp_path: Path, capsys) -> None:
    hand_written = tmp_path / "hand_written"
    (hand_written / "configs").mkdir(parents=True)
    capsys.readouterr()
    assert main(["bundle", "check", str(hand_written), str(planned)]) == 0
    out = capsys.readouterr().out
    assert f"{hand_written}: not generated (no plans/plan.json)" in out
    assert f"{planned}: ok" in out


def test_a_missing_folder_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["bundle", "check", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
