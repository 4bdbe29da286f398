"""The clinicians' loop on a PACS: Orthanc as the datastore, labels stored as DICOM SEG, training from them.

Run it inside a private network namespace (Orthanc cannot bind to 127.0.0.1 alone)::

    unshare -n -- bash -c 'ip link set lo up && exec .venv/bin/python workflows/orthanc/loop.py \
        --workdir /tmp/loop --report /tmp/loop/report.json'

Steps: start Orthanc, upload real DICOM series, start ``medseg serve`` on its DICOMweb root and run
``workflows/label_loop.py`` (MONAI Label's client, as 3D Slicer drives it: wrong labels refused,
next sample -> infer -> submit the corrected label for every series -> train -> DONE -> the
promotion decision -> inference). Then check on Orthanc that each submitted label is a DICOM SEG
written by medseg (coded segments, SEMIAUTOMATIC, referencing its source series) and that the
refused labels stored nothing; then start a second server with an empty cache, which must read
the labels back from those SEG objects (the same voxels), take a label sent as a DICOM SEG,
and fine-tune on them. Exits non-zero
on the first failed check; writes a JSON report.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))  # roundtrip (Orthanc helpers)
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "workflows"))  # http_client

from http_client import call  # noqa: E402
from roundtrip import (  # noqa: E402
    Failed,
    StepLog,
    check,
    default_series,
    fetch_series_instances,
    run_and_report,
    start_orthanc,
    stop_process_group,
    upload_series,
    wait_http,
)

from medseg.serve.launcher import LabelServer, find_label_python  # noqa: E402
from medseg.serve.workdir import discover_bundles, prepare_workdir  # noqa: E402

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def label_maps(url: str, image_ids: list[str]):
    """The final labels the server holds, as arrays (``GET /datastore/label``)."""
    import nibabel as nib
    import numpy as np

    out = {}
    for image_id in image_ids:
        resp = call("GET", f"{url}/datastore/label?label={image_id}&tag=final", timeout=300)
        check(resp.status == 200, f"GET /datastore/label {image_id}: {resp.status} {resp.detail}")
        raw = gzip.decompress(resp.body) if resp.body[:2] == b"\x1f\x8b" else resp.body
        out[image_id] = np.asarray(nib.Nifti1Image.from_bytes(raw).dataobj).astype(int)
    return out


def wait_train(url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = call("GET", f"{url}/train/", timeout=30).json()
        if status.get("status") in ("DONE", "ERROR", "STOPPED"):
            return status
        time.sleep(3)
    raise Failed(f"training did not finish within {timeout:.0f} s")


def run(args: argparse.Namespace) -> dict:
    import pydicom

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"steps": []}
    orthanc = f"http://127.0.0.1:{args.orthanc_port}"
    dicomweb = f"{orthanc}/dicom-web"
    step = StepLog(report)

    python = Path(args.label_python) if args.label_python else find_label_python(create=False)
    bundles = discover_bundles(REPO / "bundles", [args.bundle] if args.bundle else None)
    bundle = bundles[0]
    orthanc_proc = start_orthanc(workdir / "orthanc-storage", args.orthanc_port, workdir / "orthanc.log")
    servers: list[LabelServer] = []
    try:
        wait_http(f"{orthanc}/system", 60)
        sources = [upload_series(orthanc, Path(s)) for s in args.series]
        series = {s["series_uid"]: s for s in sources}
        step("orthanc ready, series uploaded", series=sorted(series))

        # 1. the loop through the client
        server = LabelServer(
            python, prepare_workdir(workdir / "serve1", dicomweb, bundles), log=workdir / "server1.log"
        )
        servers.append(server)
        server.start()
        server.wait_ready(timeout=args.ready_timeout)
        loop_report = workdir / "label-loop.json"
        proc = subprocess.run(
            [
                str(python),
                str(REPO / "workflows" / "label_loop.py"),
                "--url",
                server.url,
                "--model",
                bundle.name,
                "--bad-labels",
                "--epochs",
                "1",
                "--report",
                str(loop_report),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=args.loop_timeout,
        )
        print(proc.stdout[-4000:], flush=True)
        check(proc.returncode == 0, f"the client loop failed: {proc.stdout[-1500:]}")
        report["loop"] = json.loads(loop_report.read_text())
        check(sorted(report["loop"]["labelled"]) == sorted(series), "not every series was labelled")
        step("client loop done", train=report["loop"]["train"])

        # 2. the labels are SEG objects on Orthanc, written by medseg; refused labels stored nothing
        listed = call("GET", f"{dicomweb}/series?Modality=SEG", headers={"Accept": "application/dicom+json"})
        check(listed.status == 200, f"QIDO-RS for SEG series failed: {listed.detail}")
        seg_uids = [s["0020000E"]["Value"][0] for s in listed.json()]
        check(
            len(seg_uids) == len(series),
            f"{len(seg_uids)} SEG series on Orthanc, expected one per labelled series",
        )
        segs = []
        for uid in seg_uids:
            instances = fetch_series_instances(orthanc, uid)
            check(len(instances) == 1, f"SEG series {uid} holds {len(instances)} instances")
            ds = pydicom.dcmread(io.BytesIO(instances[0]))
            check(ds.SOPClassUID == SEG_SOP_CLASS, f"{uid} is not a Segmentation Storage object")
            referenced = ds.ReferencedSeriesSequence[0].SeriesInstanceUID
            check(referenced in series, f"SEG {uid} references {referenced}, not an uploaded series")
            check(
                ds.StudyInstanceUID == series[referenced]["study_uid"],
                f"SEG {uid} is not in its source's study",
            )
            check(str(ds.Manufacturer) == "medseg", f"SEG {uid} was not written by medseg")
            check("label" in str(ds.SeriesDescription), f"SEG {uid} is described {ds.SeriesDescription!r}")
            for item in ds.SegmentSequence:
                check(
                    item.SegmentAlgorithmType == "SEMIAUTOMATIC", f"segment type {item.SegmentAlgorithmType}"
                )
                check(
                    item.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT", "uncoded"
                )
                check(
                    item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "5366008",
                    "not coded as hippocampus",
                )
            segs.append(
                {
                    "seg_series_uid": uid,
                    "references": referenced,
                    "description": str(ds.SeriesDescription),
                    "segments": [str(i.SegmentLabel) for i in ds.SegmentSequence],
                }
            )
        report["segs"] = segs
        step("label SEGs checked", count=len(segs))
        submitted = label_maps(server.url, sorted(series))
        server.stop()

        # 3. a server with an empty cache reads the labels back from the SEG objects and trains on them
        server2 = LabelServer(
            python, prepare_workdir(workdir / "serve2", dicomweb, bundles), log=workdir / "server2.log"
        )
        servers.append(server2)
        server2.start()
        server2.wait_ready(timeout=args.ready_timeout)
        train_list = call("GET", f"{server2.url}/datastore/?output=train", timeout=600)
        check(train_list.status == 200, f"GET /datastore/?output=train: {train_list.detail}")
        check(
            len(train_list.json()) == len(series),
            f"the fresh server lists {len(train_list.json())} labelled images",
        )
        read_back = label_maps(server2.url, sorted(series))
        for uid in series:
            check(read_back[uid].shape == submitted[uid].shape, f"{uid}: label read back on another grid")
            differ = int((read_back[uid] != submitted[uid]).sum())
            check(differ == 0, f"{uid}: the label read back from its SEG differs in {differ} voxels")
            check(bool((submitted[uid] > 0).any()), f"{uid}: the submitted label is empty")
        step("labels read back from SEG", voxels={u: int((m > 0).sum()) for u, m in read_back.items()})
        # a label submitted as a DICOM SEG of the series (as a DICOMweb viewer sends it) is taken too
        first = segs[0]
        seg_bytes = fetch_series_instances(orthanc, first["seg_series_uid"])[0]
        resp = call(
            "PUT",
            f"{server2.url}/datastore/label?image={first['references']}",
            fields={"params": "{}"},
            files={"label": ("label.dcm", seg_bytes)},
            timeout=300,
        )
        check(resp.status == 200, f"PUT /datastore/label with a DICOM SEG: {resp.status} {resp.detail}")
        again = label_maps(server2.url, [first["references"]])[first["references"]]
        check(
            bool((again == submitted[first["references"]]).all()), "the label submitted as DICOM SEG differs"
        )
        listed = call("GET", f"{dicomweb}/series?Modality=SEG", headers={"Accept": "application/dicom+json"})
        check(
            len(listed.json()) == len(series) + 1,
            "the label submitted as DICOM SEG was not stored as a new SEG",
        )
        step("DICOM SEG label taken", image=first["references"])
        resp = call("POST", f"{server2.url}/train/{bundle.name}", json_body={"max_epochs": 1}, timeout=60)
        check(resp.status == 200, f"POST /train on the fresh server: {resp.status} {resp.detail}")
        status = wait_train(server2.url, args.loop_timeout)
        check(status.get("status") == "DONE", f"training from SEG labels ended {status.get('status')}")
        versions = call("GET", f"{server2.url}/model/versions/{bundle.name}").json()
        newest = versions["versions"][-1]
        check(newest["weights"] != "model.pt" and newest.get("decision"), f"no new version: {versions}")
        check(
            newest["labelled_images"] == len(series),
            f"trained on {newest['labelled_images']} labelled images",
        )
        report["retrain_from_seg"] = {
            k: newest.get(k) for k in ("weights", "decision", "reason", "fine_tuned_on")
        }
        step("trained from SEG labels", **report["retrain_from_seg"])
        report["ok"] = True
        return report
    finally:
        for s in servers:
            s.stop()
        stop_process_group(orthanc_proc)
        step("stopped")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", required=True, help="working folder (Orthanc storage, server workdirs, logs)"
    )
    parser.add_argument(
        "--series",
        nargs="+",
        default=[str(default_series().parent / f"Study{i}") for i in (1, 2, 3)],
        help="DICOM series folders to upload (one series each; default: the three hippocampus crops)",
    )
    parser.add_argument(
        "--bundle", default=None, help="bundle to serve (default: the first one with weights)"
    )
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--label-python", default=None, help="python of the MONAI Label venv")
    parser.add_argument("--ready-timeout", type=float, default=420)
    parser.add_argument("--loop-timeout", type=float, default=1200)
    parser.add_argument("--report", default=None, help="write the JSON report here")
    args = parser.parse_args()
    return run_and_report(run, args, "loop")


if __name__ == "__main__":
    sys.exit(main())
