"""The node's durable queue (``medseg.node.queue``): states, settling, recovery after a kill."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from medseg.node.queue import NodeQueue


def _add(queue: NodeQueue, series: str, sop: str) -> bool:
    return queue.add_instance(
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        series_uid=series,
        study_uid="1.2",
        modality="MR",
        description="t1",
        calling_aet="PACS",
        path=f"/x/{sop}.dcm",
        folder="/x",
    )


def test_series_moves_through_the_states_once(tmp_path: Path) -> None:
    queue = NodeQueue(tmp_path)
    assert _add(queue, "1.1", "1.1.1") and _add(queue, "1.1", "1.1.2") and _add(queue, "1.1", "1.1.2")
    assert queue.get("1.1").instances == 2  # a resent instance counts once
    assert queue.settle(60.0) == []  # not quiet long enough
    assert queue.claim() is None
    time.sleep(0.05)
    assert queue.settle(0.01) == ["1.1"]
    assert not _add(queue, "1.1", "1.1.3")  # complete: late instances are not added
    row = queue.claim()
    assert row is not None and row.state == "processing" and queue.claim() is None
    # a node killed while processing: the series is queued again, once
    reopened = NodeQueue(tmp_path)
    assert reopened.recover() == 1 and reopened.get("1.1").state == "ready"
    row = reopened.claim()
    reopened.set_state(row.series_uid, "segmented", outputs={"seg": "a.dcm", "rtstruct": "b.dcm"})
    assert [r.series_uid for r in reopened.to_send()] == ["1.1"]
    reopened.mark_sent("9.9", "1.1", "seg", "PACS@h:1")
    reopened.mark_sent("9.9", "1.1", "seg", "PACS@h:1")
    assert reopened.sent_uids("1.1") == {"9.9"}
    reopened.set_state("1.1", "sent")
    assert reopened.counts()["sent"] == 1 and reopened.to_send() == []
    with pytest.raises(ValueError):
        reopened.set_state("1.1", "done")


def test_failed_sends_back_off_then_give_up(tmp_path: Path) -> None:
    queue = NodeQueue(tmp_path)
    _add(queue, "2.1", "2.1.1")
    queue.settle(0.0, ["2.1"])
    queue.set_state(queue.claim().series_uid, "segmented", outputs={})
    queue.send_failed("2.1", "cannot associate", retry_after=60, give_up_after=2)
    assert queue.to_send() == [] and queue.get("2.1").state == "segmented"
    queue.send_failed("2.1", "cannot associate", retry_after=0, give_up_after=2)
    row = queue.get("2.1")
    assert row.state == "failed" and row.reason == "cannot associate" and row.attempts == 2


def test_a_workdir_from_before_routing_gets_the_bundle_column(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "node.sqlite") as db:  # the first schema's series table, one row
        db.execute(
            "CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT, modality TEXT, description TEXT,"
            " calling_aet TEXT, folder TEXT NOT NULL, state TEXT NOT NULL, instances INTEGER NOT NULL DEFAULT 0,"
            " first_received REAL NOT NULL, last_received REAL NOT NULL, reason TEXT, outputs TEXT,"
            " attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, updated REAL NOT NULL)"
        )
        db.execute("INSERT INTO series (series_uid, folder, state, first_received, last_received, updated)"
                   " VALUES ('3.1', '/x', 'sent', 1, 1, 1)")  # fmt: skip
    queue = NodeQueue(tmp_path)
    assert queue.get("3.1").bundle == ""
    queue.set_state("3.1", "sent", bundle="hippocampus_unet3d")
    assert queue.get("3.1").bundle == "hippocampus_unet3d"
