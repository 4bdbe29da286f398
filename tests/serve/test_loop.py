"""The clinicians' loop through MONAI Label's own client (workflows/label_loop.py) on a local datastore.

``medseg serve`` starts on an EMPTY studies folder; the client uploads real hippocampus images
(broken uploads are refused), wrong labels are refused, every image is labelled (next sample ->
infer -> submit the corrected label), the model is fine-tuned (one epoch) and the new version is promoted only if it is no
worse on the held-out validation part; then a deliberately worse candidate (a wrecking learning
rate) must not be served; an admin promotes it by hand, the next, better version is promoted
automatically, and two rollbacks restore what served before.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from support.serve import REPO_ROOT, fold_cases, hippocampus_bundles, label_python

from medseg.serve.launcher import LabelServer
from medseg.serve.workdir import discover_bundles, prepare_workdir

pytestmark = [pytest.mark.slow, pytest.mark.needs_data, pytest.mark.needs_label_venv]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.timeout(2400)
def test_loop_through_the_client_on_an_empty_local_datastore(tmp_path: Path, shared_data: Path):
    hippocampus = shared_data / "msd-task04-hippocampus"
    python = label_python()
    bundle = (
        "hippocampus_unet3d" if "hippocampus_unet3d" in hippocampus_bundles() else hippocampus_bundles()[0]
    )
    shipped = sha256(REPO_ROOT / "bundles" / bundle / "models" / "model.pt")
    test_fold = fold_cases(hippocampus, 0)[:1]  # may be labelled, never used for the promotion decision
    cases = test_fold + fold_cases(hippocampus, 1)[:3] + fold_cases(hippocampus, 2)[:2]
    studies = tmp_path / "studies"
    studies.mkdir()
    prepared = prepare_workdir(
        tmp_path / "work", str(studies), discover_bundles(REPO_ROOT / "bundles", [bundle])
    )
    assert prepared.report is not None and prepared.report.images == []
    server = LabelServer(
        python,
        prepared,
        log=tmp_path / "server.log",
        infer_workers=1,
        extra_env={"MEDSEG_DATA_DIR": str(shared_data)},
    )
    report_path = tmp_path / "loop.json"
    command = [
        str(python),
        str(REPO_ROOT / "workflows" / "label_loop.py"),
        "--model",
        bundle,
        "--bad-labels",
        "--worse",
        "--epochs",
        "1",
        "--timeout",
        "900",
        "--report",
        str(report_path),
    ]
    for case in cases:
        command += ["--upload", f"{case}={hippocampus / 'imagesTr' / f'{case}.nii.gz'}"]
        command += ["--truth", f"{case}={hippocampus / 'labelsTr' / f'{case}.nii.gz'}"]
    server.start()
    try:
        info = server.wait_ready(timeout=420)
        assert info["datastore"]["total"] == 0
        proc = subprocess.run(
            [*command, "--url", server.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=2100,
        )
    finally:
        server.stop()
    assert server.process.poll() is not None
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert proc.returncode == 0, proc.stdout[-6000:] + "\n--- server log ---\n" + log[-6000:]
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    assert sorted(report["labelled"]) == sorted(cases)
    refused = {
        c["case"]: c["status"]
        for c in next(s for s in report["steps"] if s["step"] == "bad labels refused")["cases"]
    }
    assert refused["another grid"] == 422 and refused["an unknown image"] == 404

    uploads = next(s for s in report["steps"] if s["step"] == "bad uploads refused")["cases"]
    assert [c["status"] for c in uploads] == [422, 415, 400]

    trained, worse = report["train"], report["worse"]
    assert trained["status"] == "DONE"
    # the validation part is held out, recorded, and never holds a test-fold case
    validation = trained["validation_images"]
    assert validation and not set(validation) & set(test_fold)
    models = prepared.app_dir / "model" / bundle / "models"
    recorded = json.loads((models / "validation.json").read_text())
    assert recorded["images"] == validation and recorded["excluded_test_fold"] == test_fold
    # the deliberately worse candidate was scored, kept, and is not served
    assert worse["decision"] == "kept as candidate" and worse["dice"] < worse["serving_dice"]
    assert report["versions"]["serving"] == trained["serving"] != worse["weights"]
    statuses = {v["weights"]: v["status"] for v in report["versions"]["versions"]}
    assert statuses[worse["weights"]] == "candidate"
    # decisions and changes of the serving version are in the log files and the server log
    events = [json.loads(line) for line in (models / "serving-log.jsonl").read_text().splitlines()]
    assert [(e["event"], e["weights"]) for e in events[-4:]] == [
        ("promoted", worse["weights"]),
        ("promoted", report["better"]["weights"]),
        ("rolled back", worse["weights"]),
        ("rolled back", worse["serving_before"]),
    ]
    assert events[-3]["by"] == "training" and "Dice" in events[-3]["reason"]
    # a version better than the serving one was promoted automatically
    assert report["better"]["decision"] == "promoted"
    assert report["better"]["dice"] >= report["better"]["serving_dice"]
    assert f"{worse['weights']}: kept as candidate" in log
    # shipped and served base weights untouched; nothing written into the studies folder
    assert sha256(REPO_ROOT / "bundles" / bundle / "models" / "model.pt") == shipped
    assert sha256(models / "model.pt") == shipped
    assert not any(studies.iterdir())
