"""Orthanc -> ``medseg node`` -> Orthanc: a PACS forwards series, the SEG and RTSTRUCT come back.

Run it inside a private network namespace so that everything is reachable on loopback only
(Orthanc cannot bind to 127.0.0.1 alone)::

    unshare -n -- bash -c 'ip link set lo up && exec .venv/bin/python workflows/orthanc/node_forward.py \
        --workdir /tmp/nf --report /tmp/nf/report.json'

What it wires and checks (the set-up of workflows/README.md, "A DICOM node"):

1. Orthanc with its DICOM port on (AE ``ORTHANC``) and two nodes declared as modalities:
   ``medseg`` (a node whose destination is Orthanc's AE, C-STORE) and ``medsegweb`` (a node whose
   destination is Orthanc's DICOMweb root, STOW-RS). Both nodes accept only the calling AE ``ORTHANC``.
2. Orthanc echoes both nodes (``POST /modalities/<node>/echo``).
3. One hippocampus series is uploaded over REST and sent as a study with
   ``POST /modalities/medseg/store``, another with ``POST /modalities/medsegweb/store``.
4. Orthanc restarts with the auto-routing rule ``workflows/orthanc/autoroute.lua``; a third series
   uploaded over REST reaches the node by that rule alone.
5. For each series, Orthanc then holds exactly one SEG and one RTSTRUCT in the same study, each
   referencing that series; the nodes' queues show each series sent once and no other series
   (the results that came back to Orthanc were not routed to the node again).

Exits non-zero with a message on the first failed check; writes a JSON report.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "workflows"))  # http_client
sys.path.insert(0, str(REPO / "workflows" / "orthanc"))  # roundtrip's helpers

from http_client import call  # noqa: E402
from roundtrip import (  # noqa: E402
    Failed,
    StepLog,
    check,
    run_and_report,
    stop_process_group,
    upload_series,
    wait_http,
)

from medseg.node.queue import NodeQueue  # noqa: E402

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
AUTOROUTE_LUA = REPO / "workflows" / "orthanc" / "autoroute.lua"
ORTHANC_AET = "ORTHANC"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def default_crops() -> Path:
    import os

    data = os.environ.get("MEDSEG_DATA_DIR")
    root = Path(data) if data else REPO.parent / "shared" / "data"
    return root / "dicom" / "hippocampus-crops"


def orthanc_config(
    args: argparse.Namespace, storage: Path, nodes: dict[str, tuple[str, int]], lua: bool
) -> dict:
    """Orthanc's configuration: DICOM port on, the nodes as modalities, the auto-routing rule if ``lua``."""
    return {
        "Name": "medseg-node-check",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "StorageCompression": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "HttpServerEnabled": True,
        "HttpPort": args.orthanc_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AET,
        "DicomPort": args.orthanc_dicom_port,
        "DicomModalities": {name: [aet, "127.0.0.1", port] for name, (aet, port) in nodes.items()},
        "StableAge": 1,
        "LuaScripts": [str(AUTOROUTE_LUA)] if lua else [],
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "Host": f"127.0.0.1:{args.orthanc_port}",
            "Ssl": False,
        },
    }


def start_orthanc(config: dict, workdir: Path, name: str) -> subprocess.Popen:
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config, indent=1))
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(
        ["Orthanc", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def start_node(workdir: Path, ae_title: str, port: int, destination: str, bundle: str) -> subprocess.Popen:
    """``medseg node`` in the background, accepting only Orthanc's AE, settling after 1 s."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "medseg", "node", "--port", str(port), "--host", "127.0.0.1",
        "--ae-title", ae_title, "--bundle", bundle, "--destination", destination, "--workdir", str(workdir),
        "--settle-seconds", "1", "--allowed-aet", ORTHANC_AET,
    ]  # fmt: skip
    log = open(workdir.parent / f"{workdir.name}.out", "ab")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=REPO,
        start_new_session=True,
    )


def wait_echo(orthanc: str, modality: str, node: subprocess.Popen, log: Path, timeout: float) -> None:
    """Until Orthanc's C-ECHO to ``modality`` succeeds (the node has loaded its bundle and listens)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise Failed(f"node {modality} exited with {node.returncode}: {log.read_text()[-2000:]}")
        if call("POST", f"{orthanc}/modalities/{modality}/echo", json_body={}, timeout=10).status == 200:
            return
        time.sleep(0.5)
    raise Failed(f"Orthanc's C-ECHO to {modality} failed for {timeout:.0f} s")


def study_id(orthanc: str, study_uid: str) -> str:
    found = call("POST", f"{orthanc}/tools/lookup", data=study_uid.encode(), content_type="text/plain").json()
    ids = [item["ID"] for item in found if item["Type"] == "Study"]
    check(len(ids) == 1, f"Orthanc does not know study {study_uid}")
    return ids[0]


def results_in_orthanc(orthanc: str, study_uid: str) -> dict[str, list]:
    """The SEG and RTSTRUCT instances Orthanc holds in a study, read back as pydicom datasets."""
    import pydicom

    answer = call(
        "POST",
        f"{orthanc}/tools/find",
        json_body={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    check(answer.status == 200, f"Orthanc /tools/find failed: {answer.detail}")
    found: dict[str, list] = {"SEG": [], "RTSTRUCT": []}
    for series in answer.json():
        modality = series["MainDicomTags"].get("Modality")
        if modality in found:
            for instance in series["Instances"]:
                body = call("GET", f"{orthanc}/instances/{instance}/file").body
                found[modality].append(pydicom.dcmread(io.BytesIO(body)))
    return found


def referenced_series(ds) -> str:
    """The source series a SEG or an RTSTRUCT references."""
    if ds.SOPClassUID == SEG_CLASS:
        return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    study = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    return str(study.RTReferencedSeriesSequence[0].SeriesInstanceUID)


def wait_results(orthanc: str, source: dict, timeout: float) -> dict[str, list]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = results_in_orthanc(orthanc, source["study_uid"])
        if found["SEG"] and found["RTSTRUCT"]:
            return found
        time.sleep(0.5)
    raise Failed(f"no SEG and RTSTRUCT of series {source['series_uid']} in Orthanc after {timeout:.0f} s")


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"ok": False, "series": {}}
    step = StepLog(report)
    orthanc = f"http://127.0.0.1:{args.orthanc_port}"
    crops = Path(args.crops)
    nodes = {"medseg": ("MEDSEG", args.node_port), "medsegweb": ("MEDSEGWEB", args.node_port + 1)}
    processes: list[subprocess.Popen] = []
    try:
        server = start_orthanc(
            orthanc_config(args, workdir / "storage", nodes, lua=False), workdir, "orthanc"
        )
        processes.append(server)
        dimse = start_node(
            workdir / "node",
            "MEDSEG",
            args.node_port,
            f"{ORTHANC_AET}@127.0.0.1:{args.orthanc_dicom_port}",
            args.bundle,
        )
        web = start_node(
            workdir / "node-web", "MEDSEGWEB", args.node_port + 1, f"{orthanc}/dicom-web", args.bundle
        )
        processes += [dimse, web]
        wait_http(f"{orthanc}/system", 60)
        step("orthanc up")
        sources = {name: upload_series(orthanc, crops / name) for name in ("Study1", "Study3")}
        step("uploaded over REST", series=len(sources))
        wait_echo(orthanc, "medseg", dimse, workdir / "node.out", args.ready_timeout)
        wait_echo(orthanc, "medsegweb", web, workdir / "node-web.out", args.ready_timeout)
        step("orthanc echoes both nodes")

        for name, modality in (("Study1", "medseg"), ("Study3", "medsegweb")):
            answer = call(
                "POST",
                f"{orthanc}/modalities/{modality}/store",
                json_body={"Resources": [study_id(orthanc, sources[name]["study_uid"])], "Synchronous": True},
                timeout=120,
            )
            check(answer.status == 200, f"Orthanc could not send {name} to {modality}: {answer.detail}")
            sources[name]["via"] = f"POST /modalities/{modality}/store"
        step("orthanc sent two studies to the nodes")
        for name in ("Study1", "Study3"):
            wait_results(orthanc, sources[name], args.result_timeout)
            step(f"results of {name} in orthanc")

        stop_process_group(server)
        server = start_orthanc(
            orthanc_config(args, workdir / "storage", nodes, lua=True), workdir, "orthanc-lua"
        )
        processes.append(server)
        wait_http(f"{orthanc}/system", 60)
        step("orthanc restarted with autoroute.lua")
        sources["Study2"] = upload_series(orthanc, crops / "Study2")
        sources["Study2"]["via"] = "autoroute.lua"
        wait_results(orthanc, sources["Study2"], args.result_timeout)
        step("results of Study2 in orthanc (auto-routed)")
        time.sleep(3.0)  # a result sent twice, or routed back to the node, would show by now

        queues = {"medseg": NodeQueue(workdir / "node"), "medsegweb": NodeQueue(workdir / "node-web")}
        for name, source in sources.items():
            found = results_in_orthanc(orthanc, source["study_uid"])
            refs = {kind: [referenced_series(ds) for ds in found[kind]] for kind in found}
            source.update({kind.lower(): refs[kind] for kind in refs})
            check(
                refs == {"SEG": [source["series_uid"]], "RTSTRUCT": [source["series_uid"]]},
                f"{name}: Orthanc should hold one SEG and one RTSTRUCT referencing {source['series_uid']}, got {refs}",
            )
        for modality, queue in queues.items():
            rows = queue.all()
            report[f"queue_{modality}"] = [
                {"series_uid": r.series_uid, "state": r.state, "calling_aet": r.calling_aet, "bundle": r.bundle,
                 "sent": sorted(queue.sent_uids(r.series_uid))}
                for r in rows
            ]  # fmt: skip
        expected = {
            "medseg": {sources["Study1"]["series_uid"], sources["Study2"]["series_uid"]},
            "medsegweb": {sources["Study3"]["series_uid"]},
        }
        for modality in queues:
            got = {row["series_uid"] for row in report[f"queue_{modality}"]}
            check(
                got == expected[modality],
                f"node {modality} received series {got}, expected {expected[modality]}",
            )
            for row in report[f"queue_{modality}"]:
                check(row["state"] == "sent" and len(row["sent"]) == 2, f"node {modality}: {row}")
        report["series"] = sources
        step("each series: one SEG and one RTSTRUCT in orthanc, sent once")
        report["ok"] = True
        return report
    finally:
        for process in reversed(processes):
            with contextlib.suppress(Exception):
                stop_process_group(process)
        step("stopped")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", required=True, help="working folder (Orthanc storage, node workdirs, logs)"
    )
    parser.add_argument(
        "--crops", default=str(default_crops()), help="folder of the hippocampus Study1..3 series"
    )
    parser.add_argument("--bundle", default=str(REPO / "bundles" / "hippocampus_unet3d"))
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--orthanc-dicom-port", type=int, default=4242)
    parser.add_argument("--node-port", type=int, default=11112, help="the C-STORE node; the STOW-RS node: +1")
    parser.add_argument("--ready-timeout", type=float, default=240)
    parser.add_argument("--result-timeout", type=float, default=180)
    parser.add_argument("--report", default=None, help="write the JSON report here")
    args = parser.parse_args()
    return run_and_report(run, args, "node forwarding")


if __name__ == "__main__":
    sys.exit(main())
