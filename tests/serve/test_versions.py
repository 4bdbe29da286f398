"""The promotion rule and the version store of medseg.serve.label.versions (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medseg.serve.label.versions import (
    SHIPPED,
    VersionError,
    VersionStore,
    choose_validation,
    mean_dice,
    should_promote,
)


def test_promotion_rule_never_serves_a_worse_or_unscored_candidate():
    assert should_promote(0.85, 0.85)  # not below: promoted
    assert should_promote(0.86, 0.85)
    assert not should_promote(0.849, 0.85)
    assert not should_promote(None, 0.85)
    assert not should_promote(0.9, None)
    assert not should_promote(float("nan"), 0.5)


def test_mean_dice_over_foreground_labels():
    truth = np.zeros((4, 4, 4), int)
    truth[:2] = 1
    truth[2:] = 2
    assert mean_dice(truth, truth, [1, 2]) == 1.0
    pred = truth.copy()
    pred[pred == 2] = 0
    assert mean_dice(pred, truth, [1, 2]) == pytest.approx(0.5)


def test_validation_part_is_deterministic_grows_and_never_holds_the_test_fold():
    labelled = [f"case_{i:03d}" for i in range(10)]
    first = choose_validation(labelled, [], excluded=["case_000"])
    assert first == choose_validation(list(reversed(labelled)), [], excluded=["case_000"])
    assert len(first) == 2 and "case_000" not in first
    # held out once, held out for good: more labels only add to it
    more = choose_validation(
        labelled + [f"case_{i:03d}" for i in range(10, 20)], first, excluded=["case_000"]
    )
    assert set(first) <= set(more) and len(more) == 4
    # too few labels: nothing held out, fine-tuning keeps two images
    assert choose_validation(["a", "b"], []) == []
    assert len(choose_validation(["a", "b", "c"], [])) == 1
    # only test-fold images: none may be used
    assert choose_validation(["a", "b", "c"], [], excluded=["a", "b", "c"]) == []


def _bundle(tmp_path: Path, versions: int) -> VersionStore:
    models = tmp_path / "bundle" / "models"
    models.mkdir(parents=True)
    (models / SHIPPED).write_bytes(b"shipped")
    for n in range(1, versions + 1):
        (models / f"model-ft{n:03d}-20260101T00000{n}.pt").write_bytes(b"v%d" % n)
    return VersionStore(models.parent)


def test_store_serves_shipped_weights_until_a_promotion_and_rolls_back(tmp_path: Path):
    store = _bundle(tmp_path, 2)
    ft1, ft2 = (p.name for p in store.fine_tuned())
    assert store.serving() == SHIPPED
    assert store.next_version_path().name.startswith("model-ft003-")
    store.add_record({"weights": ft1, "decision": "kept as candidate", "dice": 0.5, "serving_dice": 0.8})
    summary = store.summary()
    assert summary["serving"] == SHIPPED and summary["rollback_to"] is None
    assert {v["weights"]: v["status"] for v in summary["versions"]} == {
        SHIPPED: "serving",
        ft1: "candidate",
        ft2: "candidate",
    }
    assert summary["versions"][1]["dice"] == 0.5
    store.promote(ft2, by="admin", reason="checked")
    assert store.serving() == ft2 and store.summary()["rollback_to"] == SHIPPED
    store.promote(ft1, by="admin")
    assert store.rollback(by="admin")["serving"] == ft2
    assert store.rollback(by="admin")["serving"] == SHIPPED
    with pytest.raises(VersionError, match="nothing to roll back"):
        store.rollback()
    with pytest.raises(VersionError, match="not a weights version"):
        store.promote("../../etc/passwd")
    events = [json.loads(line) for line in store.serving_log_path.read_text().splitlines()]
    assert [e["event"] for e in events] == ["promoted", "promoted", "rolled back", "rolled back"]
    assert events[0]["by"] == "admin" and events[0]["reason"] == "checked"
    assert (store.models / SHIPPED).read_bytes() == b"shipped"


def test_store_records_the_validation_part(tmp_path: Path):
    store = _bundle(tmp_path, 0)
    labelled = ["hippocampus_001", "hippocampus_002", "hippocampus_003", "hippocampus_004"]
    chosen = store.update_validation(labelled, test_fold={"hippocampus_001"})
    recorded = store.validation()
    assert recorded["images"] == chosen and len(chosen) == 1 and "hippocampus_001" not in chosen
    assert recorded["excluded_test_fold"] == ["hippocampus_001"]
    assert store.update_validation(labelled + ["hippocampus_005"], test_fold={"hippocampus_001"}) == chosen
