"""``medseg node`` end to end against a plain pynetdicom peer acting as the PACS.

The peer sends two hippocampus MR series (suitable), the three CT slices of the liver set (CT:
not suitable for the MR bundle) and a DICOM SEG alone (no image); the node is killed with
SIGKILL while it segments, and restarted on the same workdir. Then: every suitable series' SEG
and RTSTRUCT reached the peer exactly once, each referencing its series; the two others are
refused with their reasons and sent nothing; C-ECHO works, a calling AE outside --allowed-aet is
rejected, and ``medseg node status`` lists it all.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from medseg.node.queue import NodeQueue

pytestmark = [pytest.mark.needs_data, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Peer:
    """A storage SCP recording every result the node sends (the PACS' receiving side)."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt

        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(SEG_CLASS)
        ae.add_supported_context(RTSTRUCT_CLASS)
        self.port = _free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000


def _scu(ae_title: str = "TESTPACS"):
    from pynetdicom import AE, StoragePresentationContexts, VerificationPresentationContexts

    ae = AE(ae_title=ae_title)
    ae.requested_contexts = list(StoragePresentationContexts[:120]) + list(VerificationPresentationContexts)
    return ae


def _echo(port: int, ae_title: str = "TESTPACS") -> bool:
    assoc = _scu(ae_title).associate("127.0.0.1", port, ae_title="MEDSEG")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0x0000


def _send(port: int, files: list[Path]) -> None:
    assoc = _scu().associate("127.0.0.1", port, ae_title="MEDSEG")
    assert assoc.is_established
    for path in files:
        status = assoc.send_c_store(pydicom.dcmread(path))
        assert status.Status == 0x0000, (path, status)
    assoc.release()


def _start(workdir: Path, port: int, peer: Peer) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "medseg", "node", "--port", str(port), "--host", "127.0.0.1",
        "--bundle", str(BUNDLE), "--destination", f"PACS@127.0.0.1:{peer.port}",
        "--workdir", str(workdir), "--settle-seconds", "1", "--allowed-aet", "TESTPACS",
    ]
    log = open(workdir.parent / f"node-{time.monotonic_ns()}.out", "w")  # noqa: SIM115 (the child keeps it)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    _wait(lambda: process.poll() is None and _echo(port), 180, "the node to answer C-ECHO")
    return process


def test_node_segments_each_series_once_across_a_kill(shared_data: Path, tmp_path: Path) -> None:
    crops = shared_data / "dicom" / "hippocampus-crops"
    mr = {study: sorted((crops / study).rglob("*.dcm")) for study in ("Study1", "Study2")}
    ct = sorted((shared_data / "dicom" / "ct-liver-seg" / "ct-3slice").rglob("*.dcm"))
    seg_only = [shared_data / "dicom" / "ct-liver-seg" / "liver.dcm"]
    assert all(mr.values()) and len(ct) == 3
    peer = Peer()
    workdir = tmp_path / "node"
    workdir.mkdir()
    port = _free_port()
    node = _start(workdir, port, peer)
    try:
        assert not _echo(port, "INTRUDER")  # --allowed-aet: other calling AEs are rejected
        for files in (*mr.values(), ct, seg_only):
            _send(port, files)
        queue = NodeQueue(workdir)
        _wait(lambda: any(r.state == "processing" for r in queue.all()), 60, "a series to be processing")
        node.send_signal(signal.SIGKILL)
        node.wait(30)
        assert len(peer.received) < 4  # killed before everything was sent
        node = _start(workdir, port, peer)
        final = {"sent", "refused"}
        _wait(
            lambda: len(queue.all()) == 4 and all(r.state in final for r in queue.all()), 300, "every series done"
        )
        time.sleep(1.5)  # anything sent twice would arrive now
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(node.pid, signal.SIGKILL)
        peer.server.shutdown()

    rows = {r.series_uid: r for r in queue.all()}
    series_of = {study: str(pydicom.dcmread(files[0]).SeriesInstanceUID) for study, files in mr.items()}
    for uid in series_of.values():
        assert rows[uid].state == "sent"
    ct_uid = str(pydicom.dcmread(ct[0]).SeriesInstanceUID)
    seg_uid = str(pydicom.dcmread(seg_only[0]).SeriesInstanceUID)
    assert rows[ct_uid].state == "refused" and "modality" in rows[ct_uid].reason
    assert rows[seg_uid].state == "refused" and rows[seg_uid].reason

    # exactly once: one SEG and one RTSTRUCT per suitable series, no other object
    uids = [str(ds.SOPInstanceUID) for ds in peer.received]
    assert len(uids) == len(set(uids)) == 4
    got = {}
    for ds in peer.received:
        if ds.SOPClassUID == SEG_CLASS:
            referenced = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
        else:
            assert ds.SOPClassUID == RTSTRUCT_CLASS
            study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
            referenced = study.RTReferencedSeriesSequence[0].SeriesInstanceUID
        got.setdefault(str(referenced), []).append(str(ds.SOPClassUID))
    assert {uid: sorted(classes) for uid, classes in got.items()} == {
        uid: sorted([SEG_CLASS, RTSTRUCT_CLASS]) for uid in series_of.values()
    }

    status = subprocess.run(
        [sys.executable, "-m", "medseg", "node", "status", "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0].startswith("receiving 0, ready 0, processing 0, segmented 0, sent 2, refused 2")
    assert "modality" in status.stdout and seg_uid in status.stdout
    log = (workdir / "node.log").read_text()
    assert "refused series" in log
    assert "1 series interrupted by a stop are queued again" in log  # the kill hit a segmentation
