"""An ensemble bundle renders from its ``plans/`` alone; its ``train.json`` is the members' recipe
(each trains on the folds other than the test fold and its own validation fold), even when the
configuration's single model trains on all four non-test folds (``medseg train --fold all``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medseg.plan.planner import apply_overrides
from medseg.render import EnsembleTemplate

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "bundles" / "hippocampus_ensemble"


def test_members_train_on_three_folds_when_the_single_model_trains_on_four(tmp_path: Path) -> None:
    root = tmp_path / "ensemble"
    shutil.copytree(SHIPPED / "plans", root / "plans")
    before = json.loads(EnsembleTemplate.from_bundle(root).files()["configs/train.json"])
    first = json.loads((root / "plans" / "ensemble.json").read_text())["configurations"][0]
    plan_file = root / "plans" / "members" / first / "plan.json"
    plan = json.loads(plan_file.read_text())
    apply_overrides(plan["values"], {"training.train_folds": [1, 2, 3, 4]})
    plan_file.write_text(json.dumps(plan))
    train = json.loads(EnsembleTemplate.from_bundle(root).files()["configs/train.json"])
    rule = "$[k for k in range(5) if k not in (@test_fold, @val_fold)]"
    assert train["train_folds"] == before["train_folds"] == rule
    assert (train["test_fold"], train["val_fold"]) == (0, 1)
