"""``medseg node`` end to end against a plain pynetdicom peer acting as the PACS.

The peer sends two hippocampus MR series (suitable), the three CT slices of the liver set (CT:
not suitable for the MR bundle) and a DICOM SEG alone (no image); the node is killed with
SIGKILL while it segments, and restarted on the same workdir. Then: every suitable series' SEG
and RTSTRUCT reached the peer exactly once, each referencing its series; the two others are
refused with their reasons and sent nothing; C-ECHO works, a calling AE outside --allowed-aet is
rejected, and ``medseg node status`` lists it all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from support.dicom_peer import RTSTRUCT_CLASS, SEG_CLASS, Peer, free_port, scu, send

from medseg.node.queue import NodeQueue

pytestmark = [pytest.mark.needs_data, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _echo(port: int, ae_title: str = "TESTPACS") -> bool:
    assoc = scu(ae_title).associate("127.0.0.1", port, ae_title="MEDSEG")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0x0000


def _start(workdir: Path, port: int, peer: Peer) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "medseg",
        "node",
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
        "--bundle",
        str(BUNDLE),
        "--destination",
        f"PACS@127.0.0.1:{peer.port}",
        "--workdir",
        str(workdir),
        "--settle-seconds",
        "1",
        "--allowed-aet",
        "TESTPACS",
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
    port = free_port()
    node = _start(workdir, port, peer)
    try:
        assert not _echo(port, "INTRUDER")  # --allowed-aet: other calling AEs are rejected
        for files in (*mr.values(), ct, seg_only):
            send(port, files)
        queue = NodeQueue(workdir)
        _wait(lambda: any(r.state == "processing" for r in queue.all()), 60, "a series to be processing")
        node.send_signal(signal.SIGKILL)
        node.wait(30)
        assert len(peer.received) < 4  # killed before everything was sent
        node = _start(workdir, port, peer)
        final = {"sent", "refused"}
        _wait(
            lambda: len(queue.all()) == 4 and all(r.state in final for r in queue.all()),
            300,
            "every series done",
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
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0].startswith(
        "receiving 0, ready 0, processing 0, segmented 0, sent 2, refused 2"
    )
    assert "modality" in status.stdout and seg_uid in status.stdout
    log = (workdir / "node.log").read_text()
    assert "refused series" in log
    assert "1 series interrupted by a stop are queued again" in log  # the kill hit a segmentation


def test_routes_pick_the_bundle_and_refuse_what_matches_none(shared_data: Path, tmp_path: Path) -> None:
    """Two routes to two bundles, no fallback: each hippocampus series goes to its rule's bundle, the
    full-head MR (another description) and the CT are refused with the reason and send nothing."""
    from medseg.node.routing import parse_route
    from medseg.node.service import Destination, DicomNode, NodeConfig

    crops = shared_data / "dicom" / "hippocampus-crops"
    mr = {study: sorted((crops / study).rglob("*.dcm")) for study in ("Study1", "Study2")}
    head = sorted((shared_data / "dicom" / "brain-mr" / "study1-t1post").rglob("*.dcm"))
    ct = sorted((shared_data / "dicom" / "ct-liver-seg" / "ct-3slice").rglob("*.dcm"))
    peer = Peer()
    config = NodeConfig(
        workdir=tmp_path / "node",
        bundle=None,
        destination=Destination("PACS", "127.0.0.1", peer.port),
        port=free_port(),
        host="127.0.0.1",
        settle_seconds=0.0,
        routes=(
            parse_route("Modality=MR,SeriesDescription~hippo,PatientID=PGBM-006:hippocampus_unet2d"),
            parse_route("Modality=MR,SeriesDescription~hippo:hippocampus_unet3d"),
        ),
    )
    node = DicomNode(config)
    node.start_server()
    try:
        for files in (*mr.values(), head, ct):
            send(config.port, files)
        while node.step():
            pass
    finally:
        node.stop()
        peer.server.shutdown()

    rows = {r.series_uid: r for r in node.queue.all()}
    uid = {
        name: str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        for name, files in (*mr.items(), ("head", head), ("ct", ct))
    }
    assert rows.keys() == set(uid.values())
    assert (rows[uid["Study1"]].state, rows[uid["Study1"]].bundle) == ("sent", "hippocampus_unet3d")
    assert (rows[uid["Study2"]].state, rows[uid["Study2"]].bundle) == (
        "sent",
        "hippocampus_unet2d",
    )  # PGBM-006
    for name, description in (("head", "'T1post'"), ("ct", "None")):
        row = rows[uid[name]]
        assert row.state == "refused" and row.bundle == "" and row.outputs == {}
        assert (
            row.reason.startswith("no route matches this series")
            and f"SeriesDescription={description}" in row.reason
        )
    report = json.loads((Path(rows[uid["Study2"]].outputs["seg"]).parent / "report.json").read_text())
    assert report["bundle"]["name"] == "hippocampus_unet2d"
    referenced = sorted(
        str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
        for ds in peer.received
        if ds.SOPClassUID == SEG_CLASS
    )
    assert len(peer.received) == 4 and referenced == sorted([uid["Study1"], uid["Study2"]])


def test_a_dicomweb_destination_that_does_not_answer_is_retried_later(
    shared_data: Path, tmp_path: Path
) -> None:
    """STOW-RS to a port nothing listens on: the series stays segmented with the reason, nothing counts as sent."""
    from medseg.node.service import DicomNode, DicomWebDestination, NodeConfig

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    node = DicomNode(
        NodeConfig(
            workdir=tmp_path,
            bundle=REPO / "bundles" / "hippocampus_unet3d",
            destination=DicomWebDestination(url),
        )
    )
    seg = shared_data / "dicom" / "ct-liver-seg" / "liver.dcm"
    source = pydicom.dcmread(seg, stop_before_pixels=True)
    node.queue.add_instance(
        sop_instance_uid="1.2.3.1", sop_class_uid=SEG_CLASS, series_uid="1.2.3", study_uid=str(source.StudyInstanceUID),
        modality="MR", description="", calling_aet="PACS", path=str(seg), folder=str(seg.parent),
    )  # fmt: skip
    node.queue.settle(0.0, ["1.2.3"])
    row = node.queue.claim()
    outputs = {"seg": str(seg), "rtstruct": str(seg.parent / "partial_overlaps.dcm")}
    node.queue.set_state(row.series_uid, "segmented", outputs=outputs)
    node.send(node.queue.get("1.2.3"))
    after = node.queue.get("1.2.3")
    assert after.state == "segmented" and after.attempts == 1
    assert after.reason.startswith(f"STOW-RS to {url} failed")
    assert node.queue.sent_uids("1.2.3") == set() and node.queue.to_send() == []  # the retry waits
