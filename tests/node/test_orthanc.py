"""``medseg node`` behind Orthanc: Orthanc forwards studies to the node, the SEG and RTSTRUCT come back.

The whole exchange (workflows/orthanc/node_forward.py: Orthanc with its DICOM port, a node sending
by C-STORE, a node sending by STOW-RS, Orthanc's store requests and its auto-routing Lua rule)
runs inside ``unshare -n``, a network namespace with only loopback, because Orthanc cannot bind
to loopback alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.needs_data, pytest.mark.needs_orthanc]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "workflows" / "orthanc" / "node_forward.py"


@pytest.mark.timeout(600)
def test_orthanc_forwards_studies_and_stores_the_results(shared_data: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    script = (
        f"ip link set lo up && exec '{sys.executable}' '{SCRIPT}' --workdir '{tmp_path / 'nf'}'"
        f" --crops '{shared_data / 'dicom' / 'hippocampus-crops'}' --report '{report_path}'"
    )
    proc = subprocess.run(
        ["unshare", "-n", "--", "bash", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=560,
    )
    logs = "".join(p.read_text()[-3000:] for p in sorted((tmp_path / "nf").glob("*.out")))
    assert proc.returncode == 0, proc.stdout[-6000:] + logs
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    series = report["series"]
    # the three ways in: Orthanc's store request to each node (C-STORE and STOW-RS back), and the Lua rule
    assert {name: s["via"] for name, s in series.items()} == {
        "Study1": "POST /modalities/medseg/store",
        "Study3": "POST /modalities/medsegweb/store",
        "Study2": "autoroute.lua",
    }
    for s in series.values():  # exactly one SEG and one RTSTRUCT in Orthanc, each referencing its series
        assert s["seg"] == [s["series_uid"]] and s["rtstruct"] == [s["series_uid"]]
    rows = report["queue_medseg"] + report["queue_medsegweb"]
    assert sorted(r["series_uid"] for r in rows) == sorted(s["series_uid"] for s in series.values())
    for row in rows:  # each sent once, from Orthanc's AE, results never routed back to the node
        assert row["state"] == "sent" and len(row["sent"]) == 2 and row["calling_aet"] == "ORTHANC"
