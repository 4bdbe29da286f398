"""Orthanc round trip: a real series in Orthanc, segmented through MONAI Label, SEG stored back.

Orthanc (Debian's orthanc + orthanc-dicomweb; CI installs them with workflows/setup_ci.sh) cannot
bind to loopback only, so the whole round trip (workflows/orthanc/roundtrip.py: Orthanc, the MONAI
Label server and the client) runs inside ``unshare -n``, a network namespace with only loopback.
"""

from __future__ import annotations

import json
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
]


@pytest.mark.timeout(1500)
def test_orthanc_round_trip_stores_a_coded_seg(shared_data: Path, tmp_path: Path):
    python = label_python()
    bundle = hippocampus_bundles()[0]
    series = shared_data / "dicom" / "hippocampus-crops" / "Study1"
    report_path = tmp_path / "report.json"
    script = (
        "ip link set lo up && exec "
        f"'{sys.executable}' '{REPO_ROOT / 'workflows' / 'orthanc' / 'roundtrip.py'}' "
        f"--workdir '{tmp_path / 'rt'}' --series '{series}' --bundle {bundle} "
        f"--label-python '{python}' --report '{report_path}'"
    )
    proc = subprocess.run(
        ["unshare", "-n", "--", "bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1400,
    )
    output = proc.stdout[-6000:]
    log = tmp_path / "rt" / "server.log"
    assert proc.returncode == 0, output + (log.read_text()[-4000:] if log.is_file() else "")
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    labels = open_bundle(REPO_ROOT / "bundles" / bundle).labels
    segments = report["segments"]
    assert [s["label"] for s in segments] == [labels[v] for v in sorted(labels) if v != 0]
    by_label = {s["label"]: s for s in segments}
    for name, modifier in (("anterior hippocampus", "Anterior"), ("posterior hippocampus", "Posterior")):
        seg = by_label[name]
        assert seg["category"] == ["91723000", "SCT", "Anatomical Structure"]
        assert seg["type"][:2] == ["5366008", "SCT"]
        assert [m[2] for m in seg["modifiers"]] == [modifier]
    steps = [s["step"] for s in report["steps"]]
    assert steps[-1] == "stopped" and "seg matches label map" in steps
