"""OHIF in a real browser: the study list, the viewer, and a SEG that medseg stored, in headless Chromium.

MONAI Label ships OHIF v3 at ``/ohif/``; nothing else checks that it works with our server and an
Orthanc datastore. workflows/orthanc/ohif_browser.py drives Debian's Chromium through selenium and
chromedriver; it runs inside ``unshare -n -p -f --kill-child``: a network namespace with only
loopback (Orthanc cannot bind to loopback only) that is also a PID namespace, so that Orthanc, the
server, chromedriver and every Chromium process end with it, also when the test times out.
When this medseg has the login of ``medseg serve --users``, the server runs with a users file and the
browser logs in on the login page first (checked: ``/ohif/`` is closed before, the session cookie is
HttpOnly and SameSite=Strict), as the issue asks; without it the browser goes straight to ``/ohif/``.

The click test does the same with the interactive bundle (served as MONAI Label's ``deepedit`` type)
in OHIF's *MONAI Label* mode: its Point Prompts tab runs the model, a click placed with its point tool
runs it again, and the click must reach the server at the voxel under the clicked position and change
the mask (``ohif_browser.py --check clicks``).

Screenshots of each stage are kept: the test prints their folder and copies them, with the logs, to
``$MEDSEG_TEST_ARTIFACTS/<test name>`` when that is set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.serve import REPO_ROOT, hippocampus_bundles, label_python

from medseg.bundle.core import open_bundle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs_data,
    pytest.mark.needs_label_venv,
    pytest.mark.needs_orthanc,
    pytest.mark.needs_browser,
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_LIMIT_S = 840
CLICK_MODEL = "hippocampus_interactive"  # served as MONAI Label's deepedit type


def keep_artifacts(workdir: Path, report: Path, name: str = "test_ohif") -> Path:
    """Copy the screenshots, the report and the logs to ``$MEDSEG_TEST_ARTIFACTS/<name>`` (if set);
    returns the folder that holds the screenshots."""
    shots = workdir / "screenshots"
    root = os.environ.get("MEDSEG_TEST_ARTIFACTS")
    if not root:
        return shots
    dest = Path(root) / name
    dest.mkdir(parents=True, exist_ok=True)
    if shots.is_dir():
        shutil.copytree(shots, dest / "screenshots", dirs_exist_ok=True)
    for name in ("server.log", "orthanc.log", "chromedriver.log", "browser-console.json"):
        if (workdir / name).is_file():
            shutil.copy2(workdir / name, dest / name)
    if report.is_file():
        shutil.copy2(report, dest / report.name)
    return dest / "screenshots"


def run_browser_check(series: Path, bundle: str, tmp_path: Path, name: str, *extra: str) -> tuple[dict, dict]:
    """Run workflows/orthanc/ohif_browser.py in its own network and PID namespace; once it passed
    returns its report and its steps by name (fails with its output and the server's log otherwise)."""
    workdir = tmp_path / "ohif"
    report_path = tmp_path / "report.json"
    script = (
        "ip link set lo up && exec "
        f"'{sys.executable}' '{REPO_ROOT / 'workflows' / 'orthanc' / 'ohif_browser.py'}' "
        f"--workdir '{workdir}' --series '{series}' --bundle {bundle} "
        f"--label-python '{label_python()}' --report '{report_path}' {' '.join(extra)}"
    )
    try:
        # on timeout subprocess.run kills unshare; --kill-child then ends the namespace's first process,
        # and with it every process in the PID namespace
        proc = subprocess.run(
            ["unshare", "-n", "-p", "-f", "--kill-child", "--mount-proc", "--", "bash", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=RUN_LIMIT_S,
        )
    finally:
        shots = keep_artifacts(workdir, report_path, name)
        print(f"OHIF screenshots: {shots}")
    log = workdir / "server.log"
    assert proc.returncode == 0, proc.stdout[-6000:] + (log.read_text()[-3000:] if log.is_file() else "")

    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps)[-1] == "stopped"
    for shot in report["screenshots"]:
        assert (workdir / "screenshots" / shot).read_bytes()[:8] == PNG_SIGNATURE, shot
    return report, steps


@pytest.mark.timeout(RUN_LIMIT_S + 60)
def test_ohif_shows_the_study_and_the_stored_seg(shared_data: Path, tmp_path: Path):
    bundle = hippocampus_bundles()[0]
    series = shared_data / "dicom" / "hippocampus-crops" / "Study1"
    report, steps = run_browser_check(series, bundle, tmp_path, "test_ohif")
    # with the login of `medseg serve --users` in this medseg, the browser runs as a logged-in user
    login = importlib.util.find_spec("medseg.serve.users") is not None
    assert report["users"] is login
    if login:
        assert steps["logged in"]["cookie"] == {
            "name": "medseg_session",
            "httpOnly": True,
            "sameSite": "Strict",
        }
    assert steps["chromium"]["webgl2"] is True
    assert "PGBM-002" in steps["study listed"]["row"]
    assert steps["viewer shows the series"]["coloured_pixels"] < 50
    assert bundle in steps["seg listed"]["thumbnail"]
    labels = open_bundle(REPO_ROOT / "bundles" / bundle).labels
    assert steps["seg loaded"]["segments"] == [labels[v] for v in sorted(labels) if v != 0]
    assert steps["seg loaded"]["coloured_pixels"] > 500
    for name in ("01-study-list.png", "02-viewer.png", "03-seg-listed.png", "04-seg-loaded.png"):
        assert name in report["screenshots"]


@pytest.mark.timeout(RUN_LIMIT_S + 60)
def test_ohif_click_changes_the_deepedit_mask(shared_data: Path, tmp_path: Path):
    """OHIF's MONAI Label mode: Point Prompts runs the interactive bundle, a click corrects its mask."""
    series = shared_data / "dicom" / "hippocampus-crops" / "Study1"
    report, steps = run_browser_check(series, CLICK_MODEL, tmp_path, "test_ohif_clicks", "--check", "clicks")
    names = open_bundle(REPO_ROOT / "bundles" / CLICK_MODEL).labels
    assert steps["monailabel ready"]["type"] == "deepedit"
    assert steps["point prompts"]["labels"] == ["background", *(names[v] for v in sorted(names) if v != 0)]
    # the first Run sends no point; the second exactly the click, at medseg's voxel under it
    automatic, click, corrected = steps["automatic"], steps["click placed"], steps["corrected"]
    assert not any(automatic["params"].get(n) for n in names.values())
    assert (click["label"], click["on_label"]) == ("posterior hippocampus", "anterior hippocampus")
    assert corrected["params"]["posterior hippocampus"] == [click["voxel"]]
    assert corrected["params"]["result_extension"] == ".nrrd"  # what OHIF asks for, and gets
    # the click changed the mask, towards the clicked label
    assert corrected["changed"] > 0 and corrected["took_clicked_label"] > 0
    for name in ("10-point-prompts.png", "11-automatic.png", "12-click.png", "13-corrected.png"):
        assert name in report["screenshots"]
