"""Orthanc <-> MONAI Label round trip: segment a series from the PACS and store the SEG back.

Run it inside a private network namespace so that both servers are reachable on loopback only
(Orthanc cannot bind to 127.0.0.1 alone)::

    unshare -n -- bash -c 'ip link set lo up && exec .venv/bin/python workflows/orthanc/roundtrip.py \
        --workdir /tmp/rt --report /tmp/rt/report.json'

Steps: start Orthanc (workflows/orthanc/run_orthanc.sh), upload a real DICOM series, start the
MONAI Label server of ``medseg serve`` against ``http://127.0.0.1:8042/dicom-web``, run
``POST /infer/<bundle>?image=<SeriesInstanceUID>&output=dicom_seg`` with ``{"store": true}`` (our
app writes the SEG with the bundle's label names and codes and stores it with STOW-RS), then
check that the SEG is listed in Orthanc, references the series, carries the bundle's segments
and coded concepts, and decodes onto the series grid to the same label map the server returns
as NIfTI. Exits non-zero with a message on the first failed check; writes a JSON report.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "workflows"))  # http_client

from http_client import call  # noqa: E402

from medseg.bundle.core import open_bundle  # noqa: E402
from medseg.serve.launcher import LabelServer, find_label_python  # noqa: E402
from medseg.serve.workdir import discover_bundles, prepare_workdir  # noqa: E402


class Failed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def default_series() -> Path:
    data = os.environ.get("MEDSEG_DATA_DIR")
    root = Path(data) if data else REPO.parent / "shared" / "data"
    return root / "dicom" / "hippocampus-crops" / "Study1"


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if call("GET", url, timeout=2).status == 200:
                return
        time.sleep(0.25)
    raise Failed(f"{url} did not answer within {timeout:.0f} s")


def start_orthanc(storage: Path, port: int, log: Path) -> subprocess.Popen:
    out = open(log, "ab")
    return subprocess.Popen(
        ["bash", str(REPO / "workflows" / "orthanc" / "run_orthanc.sh"), str(storage), str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def upload_series(orthanc: str, folder: Path) -> dict:
    import pydicom

    files = sorted(p for p in folder.rglob("*") if p.is_file())
    uids = set()
    for path in files:
        resp = call("POST", f"{orthanc}/instances", data=path.read_bytes(), content_type="application/dicom")
        check(resp.status == 200, f"Orthanc refused {path.name}: {resp.status} {resp.detail}")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        uids.add((str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)))
    check(len(uids) == 1, f"{folder} holds {len(uids)} series; give one series")
    study, series = uids.pop()
    return {"study_uid": study, "series_uid": series, "instances": len(files)}


def fetch_series_instances(orthanc: str, series_uid: str) -> list[bytes]:
    found = call(
        "POST",
        f"{orthanc}/tools/find",
        json_body={"Level": "Instance", "Query": {"SeriesInstanceUID": series_uid}},
    )
    check(found.status == 200, f"Orthanc /tools/find failed: {found.detail}")
    return [call("GET", f"{orthanc}/instances/{oid}/file").body for oid in found.json()]


class StepLog:
    """The timed steps of a check script: appended to ``report["steps"]`` and printed as they pass."""

    def __init__(self, report: dict) -> None:
        self.report = report
        self.t0 = time.monotonic()
        report.setdefault("steps", [])

    def __call__(self, name: str, **details) -> None:
        elapsed = time.monotonic() - self.t0
        self.report["steps"].append({"step": name, "t": round(elapsed, 1), **details})
        print(f"[{elapsed:6.1f} s] {name} {json.dumps(details) if details else ''}", flush=True)


def run_and_report(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace, name: str) -> int:
    """Run one check script's ``run(args)``: its JSON report to ``args.report``, "<name> OK" or the
    failure on the console, and exit code 0 or 1 (shared by the round trip, loop and OHIF scripts)."""
    report: dict = {"ok": False}
    try:
        report = run(args)
        code = 0
    except Failed as exc:
        report["error"] = str(exc)
        print(f"{name} FAILED: {exc}", file=sys.stderr)
        code = 1
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    print(f"{name} OK" if code == 0 else f"{name} failed", flush=True)
    return code


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import pydicom

    from medseg.io.image import read_image
    from medseg.segment import read_seg

    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"steps": []}
    orthanc = f"http://127.0.0.1:{args.orthanc_port}"
    dicomweb = f"{orthanc}/dicom-web"
    step = StepLog(report)

    orthanc_proc = start_orthanc(workdir / "orthanc-storage", args.orthanc_port, workdir / "orthanc.log")
    server = None
    try:
        wait_http(f"{orthanc}/system", 60)
        step("orthanc ready", url=dicomweb)
        source = upload_series(orthanc, Path(args.series))
        report["source"] = source
        step("series uploaded", **source)
        qido = call(
            "GET",
            f"{dicomweb}/studies/{source['study_uid']}/series",
            headers={"Accept": "application/dicom+json"},
        )
        check(
            qido.status == 200
            and any(s["0020000E"]["Value"][0] == source["series_uid"] for s in qido.json()),
            "the uploaded series is not listed by QIDO-RS",
        )

        names = [args.bundle] if args.bundle else None
        bundles = discover_bundles(REPO / "bundles", names)
        bundle = bundles[0]
        prepared = prepare_workdir(workdir / "serve", dicomweb, bundles)
        python = Path(args.label_python) if args.label_python else find_label_python(create=False)
        server = LabelServer(python, prepared, log=workdir / "server.log")
        server.start()
        info = server.wait_ready(timeout=args.ready_timeout)
        check(bundle.name in info["models"], f"{bundle.name} not in /info/ models {list(info['models'])}")
        step("monailabel ready", url=server.url, models=sorted(info["models"]))

        label_resp = call(
            "POST",
            f"{server.url}/infer/{bundle.name}?image={source['series_uid']}&output=image",
            fields={"params": "{}"},
            timeout=600,
        )
        check(
            label_resp.status == 200, f"/infer output=image failed: {label_resp.status} {label_resp.detail}"
        )
        label_file = workdir / "label.nii.gz"
        label_file.write_bytes(label_resp.body)
        label, _ = read_image(label_file)
        label = np.rint(np.asarray(label)).astype(int)
        step(
            "label map",
            shape=list(label.shape),
            voxels={str(v): int((label == v).sum()) for v in np.unique(label)},
        )

        seg_resp = call(
            "POST",
            f"{server.url}/infer/{bundle.name}?image={source['series_uid']}&output=dicom_seg",
            fields={"params": json.dumps({"store": True})},
            timeout=600,
        )
        check(seg_resp.status == 200, f"/infer output=dicom_seg failed: {seg_resp.status} {seg_resp.detail}")
        check(seg_resp.headers.get("x-medseg-stored") == "true", "the server did not store the SEG")
        seg_uid = seg_resp.headers.get("x-medseg-seg-series-uid", "")
        step("seg stored", seg_series_uid=seg_uid, bytes=len(seg_resp.body))

        listed = call(
            "GET",
            f"{dicomweb}/studies/{source['study_uid']}/series?Modality=SEG",
            headers={"Accept": "application/dicom+json"},
        )
        check(listed.status == 200, f"QIDO-RS for SEG series failed: {listed.detail}")
        seg_series = [s["0020000E"]["Value"][0] for s in listed.json()]
        check(seg_uid in seg_series, f"SEG series {seg_uid} not listed in Orthanc (SEG series: {seg_series})")
        stored = fetch_series_instances(orthanc, seg_uid)
        check(len(stored) == 1, f"the SEG series holds {len(stored)} instances")
        ds = pydicom.dcmread(io.BytesIO(stored[0]))
        check(
            ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4",
            f"not a Segmentation Storage object: {ds.SOPClassUID}",
        )
        check(ds.StudyInstanceUID == source["study_uid"], "the SEG is not in the source study")
        check(
            ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source["series_uid"],
            "the SEG does not reference the series",
        )

        meta = open_bundle(bundle.root)
        expected = {v: n for v, n in meta.labels.items() if v != 0}
        segments = []
        for item in ds.SegmentSequence:
            typ = item.SegmentedPropertyTypeCodeSequence[0]
            cat = item.SegmentedPropertyCategoryCodeSequence[0]
            mods = [
                (m.CodeValue, m.CodingSchemeDesignator, m.CodeMeaning)
                for m in getattr(typ, "SegmentedPropertyTypeModifierCodeSequence", [])
            ]
            segments.append(
                {
                    "number": int(item.SegmentNumber),
                    "label": str(item.SegmentLabel),
                    "category": [cat.CodeValue, cat.CodingSchemeDesignator, cat.CodeMeaning],
                    "type": [typ.CodeValue, typ.CodingSchemeDesignator, typ.CodeMeaning],
                    "modifiers": [list(m) for m in mods],
                    "algorithm": str(item.SegmentAlgorithmName) if "SegmentAlgorithmName" in item else "",
                }
            )
        report["segments"] = segments
        check(
            [s["label"] for s in segments] == [expected[v] for v in sorted(expected)],
            f"segment labels {[s['label'] for s in segments]} are not the bundle's {list(expected.values())}",
        )
        for s in segments:
            check(
                s["category"][1] in ("SCT", "DCM") and s["type"][1] in ("SCT", "DCM"),
                f"segment {s['label']} is not coded with a standard scheme: {s}",
            )
            check("spleen" not in json.dumps(s).lower(), f"segment {s['label']} is coded as spleen: {s}")
        step(
            "seg checked",
            segments=[f"{s['label']}: {s['type'][2]} {[m[2] for m in s['modifiers']]}" for s in segments],
        )

        seg_file = workdir / "seg.dcm"
        seg_file.write_bytes(stored[0])
        volume = read_seg(seg_file, source=Path(args.series))
        decoded = np.zeros(label.shape, dtype=int)
        for segment, mask in zip(volume.segments, volume.masks, strict=True):
            value = next(v for v, n in expected.items() if n == segment.label)
            decoded[np.asarray(mask)] = value
        check(decoded.shape == label.shape, f"SEG decodes to {decoded.shape}, the label map is {label.shape}")
        check(
            bool((decoded == label).all()),
            f"SEG differs from the label map in {(decoded != label).sum()} voxels",
        )
        check(all((label == v).any() for v in expected), "a label is empty: the model found no hippocampus")
        step("seg matches label map")

        # the DICOMweb proxy reads the study for OHIF, and reaches nothing of Orthanc's own REST API
        proxied = call("GET", f"{server.url}/proxy/dicom/qido/studies/{source['study_uid']}/series")
        check(proxied.status == 200 and source["series_uid"] in proxied.body.decode(), "proxy QIDO failed")
        refused = {}
        for method, target in (
            ("POST", "/proxy/dicom/wado/../../tools/shutdown"),
            ("POST", "/proxy/dicom/wado/..%2f..%2ftools/execute-script"),
            ("POST", "/proxy/dicom/wado/%2e%2e/%2e%2e/tools/shutdown"),
            ("GET", "/proxy/dicom/wado/../../../system"),
            ("GET", "/proxy/dicom/wado/modalities"),
        ):
            host, port = server.url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.putrequest(method, target)
            conn.putheader("Content-Length", "0")
            conn.endheaders()
            refused[target] = conn.getresponse().status
            conn.close()
        check(all(400 <= code < 500 for code in refused.values()), f"the proxy let through: {refused}")
        wait_http(f"{orthanc}/system", 10)  # Orthanc was not shut down
        step("proxy stays inside DICOMweb", refused=refused)
        report["ok"] = True
        return report
    finally:
        if server is not None:
            server.stop()
        stop_process_group(orthanc_proc)
        step("stopped")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", required=True, help="working folder (Orthanc storage, server workdir, logs)"
    )
    parser.add_argument("--series", default=str(default_series()), help="DICOM series folder to upload")
    parser.add_argument("--bundle", default=None, help="bundle to run (default: the first one with weights)")
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--label-python", default=None, help="python of the MONAI Label venv")
    parser.add_argument("--ready-timeout", type=float, default=420)
    parser.add_argument("--report", default=None, help="write the JSON report here")
    args = parser.parse_args()
    return run_and_report(run, args, "round trip")


if __name__ == "__main__":
    sys.exit(main())
