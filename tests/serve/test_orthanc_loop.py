"""The clinicians' loop on Orthanc (workflows/orthanc/loop.py), inside ``unshare -n``.

MONAI Label's client labels three real DICOM series served from Orthanc; every submitted label
must land on Orthanc as a DICOM SEG written by medseg (coded, referencing its series), wrong labels
must store nothing, and a server with an empty cache must read the labels back from the SEG
objects voxel for voxel and fine-tune on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.serve import REPO_ROOT, hippocampus_bundles, label_python

pytestmark = [
    pytest.mark.slow,
    pytest.mark.needs_data,
    pytest.mark.needs_label_venv,
    pytest.mark.needs_orthanc,
]


@pytest.mark.timeout(1800)
def test_loop_on_orthanc_stores_labels_as_seg_and_trains_from_them(shared_data: Path, tmp_path: Path):
    python = label_python()
    bundle = (
        "hippocampus_unet3d" if "hippocampus_unet3d" in hippocampus_bundles() else hippocampus_bundles()[0]
    )
    crops = shared_data / "dicom" / "hippocampus-crops"
    report_path = tmp_path / "report.json"
    series = " ".join(f"'{crops / f'Study{i}'}'" for i in (1, 2, 3))
    script = (
        "ip link set lo up && exec "
        f"'{sys.executable}' '{REPO_ROOT / 'workflows' / 'orthanc' / 'loop.py'}' "
        f"--workdir '{tmp_path / 'loop'}' --series {series} --bundle {bundle} "
        f"--label-python '{python}' --report '{report_path}'"
    )
    proc = subprocess.run(
        ["unshare", "-n", "--", "bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1700,
    )
    logs = "".join(
        f"\n--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted((tmp_path / "loop").glob("server*.log"))
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + logs
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    assert report["loop"]["train"]["status"] == "DONE"
    refused = [
        c["status"]
        for c in next(s for s in report["loop"]["steps"] if s["step"] == "bad labels refused")["cases"]
    ]
    assert refused and all(400 <= s < 500 for s in refused)
    assert len(report["segs"]) == 3
    assert all(s["segments"] == ["anterior hippocampus", "posterior hippocampus"] for s in report["segs"])
    assert report["retrain_from_seg"]["decision"] in ("promoted", "kept as candidate")
    steps = [s["step"] for s in report["steps"]]
    assert "labels read back from SEG" in steps and "DICOM SEG label taken" in steps
    assert steps[-1] == "stopped"
