"""``medseg train`` / ``evaluate`` for planned bundles: the test fold is refused, ``--fold K`` sets
``val_fold`` and ``train_folds`` together, and a short ``--max-minutes`` run on a planned 2-D bundle
ends within its budget with a usable model, evaluated on the test fold."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import medseg.bundle.train as bundle_train
from medseg.bundle.train import fold_overrides
from medseg.cli.main import main
from medseg.data import fold_of_cases
from medseg.data.datalist import case_id

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "bundles" / "hippocampus_unet3d"


pytestmark = pytest.mark.usefixtures("restore_root_logging")


@pytest.mark.parametrize("fold, message", [("0", "fold 0 is the test fold"), ("5", "fold 5 does not exist")])
def test_the_test_fold_and_missing_folds_are_refused(fold: str, message: str, capsys) -> None:
    assert main(["train", str(SHIPPED), "--fold", fold]) == 2
    err = capsys.readouterr().err
    assert message in err and "--fold" in err
    if fold == "0":
        assert "choose a validation fold among 1, 2, 3, 4" in err


def test_a_non_positive_budget_is_refused(capsys) -> None:
    assert main(["train", str(SHIPPED), "--max-minutes", "0"]) == 2
    assert "--max-minutes" in capsys.readouterr().err


@pytest.fixture
def planned_2d(hippocampus_slices, tmp_path: Path) -> tuple[Path, Path]:
    dataset = hippocampus_slices()
    bundle = tmp_path / "bundle"
    assert main(["plan", str(dataset), "--output", str(bundle), "--target", "cpu"]) == 0
    return dataset, bundle


def _folds(items: list[dict], fold_of: dict[str, int]) -> set[int]:
    return {fold_of[case_id(item["image"])] for item in items}


@pytest.mark.needs_data
@pytest.mark.parametrize("fold", [2, 4])
def test_fold_k_sets_val_fold_and_train_folds(planned_2d, fold: int, monkeypatch) -> None:
    from monai.bundle import ConfigParser

    dataset, bundle = planned_2d
    train = json.loads((bundle / "configs" / "train.json").read_text())
    assert (train["test_fold"], train["val_fold"]) == (0, 1)

    # what `medseg train --fold K` hands to the bundle
    seen: dict = {}

    def capture(bundle_, configs, workflow_type="train", run=True, **overrides):
        seen.update(overrides)
        raise KeyboardInterrupt  # stop before training

    monkeypatch.setattr(bundle_train, "run_workflow", capture)
    assert main(["train", str(bundle), "--data", str(dataset), "--fold", str(fold)]) == 130
    others = [k for k in range(5) if k not in (0, fold)]
    assert seen["val_fold"] == fold and seen["train_folds"] == others
    assert seen["train_folds"] == fold_overrides(fold)["train_folds"]

    # and the bundle then trains on exactly those folds, validates on K, never sees fold 0
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"dataset_dir": str(dataset), **fold_overrides(fold)})
    datalist = parser.get_parsed_content("datalist")
    fold_of = fold_of_cases([case_id(item["image"]) for item in datalist])
    assert _folds(parser.get_parsed_content("val_datalist"), fold_of) == {fold}
    assert _folds(parser.get_parsed_content("train_datalist"), fold_of) == set(others)


@pytest.mark.needs_data
def test_fold_all_trains_every_non_test_fold_and_only_monitors(planned_2d, monkeypatch, capsys) -> None:
    from monai.bundle import ConfigParser

    dataset, bundle = planned_2d
    seen: dict = {}

    def capture(bundle_, configs, workflow_type="train", run=True, **overrides):
        seen.update(overrides)
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_train, "run_workflow", capture)
    assert main(["train", str(bundle), "--data", str(dataset), "--fold", "all"]) == 130
    assert seen["train_folds"] == [1, 2, 3, 4] and "val_fold" not in seen  # the bundle's fold 1 monitors
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"dataset_dir": str(dataset), **seen})
    datalist = parser.get_parsed_content("datalist")
    fold_of = fold_of_cases([case_id(item["image"]) for item in datalist])
    assert _folds(parser.get_parsed_content("train_datalist"), fold_of) == {1, 2, 3, 4}
    assert _folds(parser.get_parsed_content("val_datalist"), fold_of) == {1}
    with pytest.raises(SystemExit) as exited:
        main(["train", str(bundle), "--fold", "some"])
    assert exited.value.code == 2
    assert "a fold number (1-4) or 'all'" in capsys.readouterr().err


@pytest.mark.needs_data
def test_a_plan_that_trains_on_all_folds_renders_them_literally(planned_2d, tmp_path: Path) -> None:
    """Recorded as ``training.train_folds``: train.json lists folds 1-4 and the README says fold 1 only
    monitors; fold 0 stays out of both lists."""
    from medseg.plan.planner import apply_overrides
    from medseg.render import BundleTemplate

    _, bundle = planned_2d
    plan = json.loads((bundle / "plans" / "plan.json").read_text())
    apply_overrides(plan["values"], {"training.train_folds": [1, 2, 3, 4]})
    files = BundleTemplate(plan).files()
    train = json.loads(files["configs/train.json"])
    assert train["train_folds"] == [1, 2, 3, 4] and train["val_fold"] == 1 and train["test_fold"] == 0
    assert "fold 1 is validated for monitoring only (it is trained on too)" in files["docs/README.md"]
    assert "$[k for k in range(5)" in (bundle / "configs" / "train.json").read_text()  # the rule's default


@pytest.mark.needs_data
@pytest.mark.slow
def test_a_short_budget_trains_a_usable_2d_model(planned_2d, tmp_path: Path, capsys) -> None:
    dataset, bundle = planned_2d
    out = tmp_path / "run"
    start = time.time()
    argv = ["train", str(bundle), "--data", str(dataset), "--max-minutes", "1", "--output-dir", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    elapsed = time.time() - start
    assert elapsed <= 60 + 5, elapsed  # the command, data caching included, keeps to its budget
    assert "trained bundle on folds 2, 3, 4:" in capsys.readouterr().out
    log = (out / "log.csv").read_text() if (out / "log.csv").is_file() else ""
    assert (out / "models" / "model.pt").is_file(), log

    metrics_file = tmp_path / "metrics.json"
    weights = out / "models" / "model.pt"
    assert main(["evaluate", str(bundle), "--data", str(dataset), "--fold", "0", "--weights", str(weights),
                 "--output", str(metrics_file)]) == 0  # fmt: skip
    result = json.loads(metrics_file.read_text())
    assert result["fold"] == 0 and result["cases"] == 52  # the 260 cases' test fold
    assert result["metrics"]["val_mean_dice"] >= 0.5, result["metrics"]


@pytest.mark.needs_data
@pytest.mark.slow
def test_plan_train_evaluate_a_3d_msd_dataset(msd_copy, tmp_path: Path, capsys) -> None:
    dataset = msd_copy(count=10)
    bundle = tmp_path / "bundle"
    assert main(["plan", str(dataset), "--output", str(bundle), "--target", "cpu"]) == 0
    assert main(["train", str(bundle), "--data", str(dataset), "--max-minutes", "0.5", "--no-progress"]) == 0
    assert (bundle / "models" / "model.pt").is_file()  # the final weights, in the bundle
    capsys.readouterr()
    metrics_file = tmp_path / "eval" / "metrics.json"
    assert main(["evaluate", str(bundle), "--data", str(dataset), "--output", str(metrics_file)]) == 0
    out = capsys.readouterr().out
    result = json.loads(metrics_file.read_text())
    assert result["fold"] == 0 and result["cases"] == 2  # evaluate's default is the test fold
    assert {"val_mean_dice", "val_dice_anterior", "val_dice_posterior", "val_hd95_anterior"} <= set(
        result["metrics"]
    )
    assert 0.0 <= result["metrics"]["val_mean_dice"] <= 1.0
    assert "fold 0, 2 cases" in out


@pytest.mark.needs_data
def test_seed_replaces_the_bundles_seed(monkeypatch, capsys) -> None:
    """``--seed`` reaches ``set_determinism`` through the bundle's ``seed``; ``--cv`` refuses it."""
    seen: dict = {}

    def capture(bundle_, configs, workflow_type="train", run=True, **overrides):
        seen.update(overrides)
        raise KeyboardInterrupt

    monkeypatch.setattr(bundle_train, "run_workflow", capture)
    assert main(["train", str(SHIPPED), "--seed", "7"]) == 130
    assert seen["seed"] == 7
    seen.clear()
    assert main(["train", str(SHIPPED)]) == 130
    assert "seed" not in seen  # the bundle's own
    train = json.loads((SHIPPED / "configs" / "train.json").read_text())
    assert "$monai.utils.set_determinism(seed=@seed)" in json.dumps(train)
    assert main(["train", str(SHIPPED), "--cv", "--seed", "7"]) == 2
    assert "--seed trains one network" in capsys.readouterr().err
