"""``medseg segment`` of a DICOMweb study query against Orthanc (run inside ``unshare -n``).

Starts Orthanc (DICOMweb on, no remote access), uploads two hippocampus crop studies and, into the
first study, a DICOM SEG (a non-image series that must be left out), then:

1. ``medseg segment http://.../dicom-web/studies/<uid>``: the study's one image series is fetched
   and segmented; its label map equals the one of the same series segmented from its folder;
2. two study queries as one batch write one result folder per study and a manifest;
3. a URL with no filter is refused with a message, before anything is fetched.

    unshare -n -- bash -c "ip link set lo up && exec .venv/bin/python workflows/orthanc/segment_query.py \\
        --workdir /tmp/sq --bundle hippocampus_unet3d --report /tmp/sq/report.json"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from roundtrip import (  # noqa: E402 - the shared Orthanc helpers of these scripts
    REPO,
    StepLog,
    call,
    check,
    default_series,
    run_and_report,
    start_orthanc,
    stop_process_group,
    upload_series,
    wait_http,
)

from medseg.errors import InputError  # noqa: E402
from medseg.io.image import read_image  # noqa: E402
from medseg.segment import segment  # noqa: E402


def _labels(folder: Path) -> np.ndarray:
    array, _ = read_image(folder / "segmentation.nii.gz")
    return np.asarray(array)


def run(args: argparse.Namespace) -> dict:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"steps": []}
    step = StepLog(report)
    orthanc = f"http://127.0.0.1:{args.orthanc_port}"
    dicomweb = f"{orthanc}/dicom-web"
    bundle = REPO / "bundles" / args.bundle
    crops = default_series().parent
    local = segment(crops / "Study1", bundle, workdir / "local", rtstruct=False)
    check(local.ok, f"local run failed: {local.failures}")
    step("segmented from the folder")
    proc = start_orthanc(workdir / "orthanc-storage", args.orthanc_port, workdir / "orthanc.log")
    try:
        wait_http(f"{orthanc}/system", 60)
        first = upload_series(orthanc, crops / "Study1")
        second = upload_series(orthanc, crops / "Study2")
        seg = (workdir / "local" / "segmentation.dcm").read_bytes()
        check(call("POST", f"{orthanc}/instances", data=seg, content_type="application/dicom").status == 200,
              "Orthanc refused the SEG")  # fmt: skip
        step("studies uploaded, with a SEG in the first")

        one = segment(f"{dicomweb}/studies/{first['study_uid']}", bundle, workdir / "one", rtstruct=False)
        check(one.ok and one.single, f"study query failed: {one.failures}")
        check(
            bool((_labels(workdir / "one") == _labels(workdir / "local")).all()),
            "the fetched series' label map differs from the folder's",
        )
        step("study query segmented like the folder (the SEG series left out)")

        urls = [f"{dicomweb}/studies/{s['study_uid']}" for s in (first, second)]
        both = segment(urls, bundle, workdir / "both", rtstruct=False)
        check(both.ok and sorted(both.results) == sorted(s["study_uid"] for s in (first, second)),
              f"batch of two studies: {sorted(both.results)} {both.failures}")  # fmt: skip
        check((workdir / "both" / "manifest.jsonl").is_file(), "no manifest")
        step("batch of two study queries", results=sorted(both.results))

        try:
            segment(dicomweb, bundle, workdir / "all")
            check(False, "a query without a filter was accepted")
        except InputError as exc:
            check("names no study" in str(exc), f"unexpected refusal: {exc}")
        check(not (workdir / "all").exists(), "the refused query wrote an output folder")
        step("a query without a filter is refused")
        report["ok"] = True
        return report
    finally:
        stop_process_group(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--bundle", default="hippocampus_unet3d")
    parser.add_argument("--orthanc-port", type=int, default=8042)
    parser.add_argument("--report", default=None)
    return run_and_report(run, parser.parse_args(), "segment query")


if __name__ == "__main__":
    sys.exit(main())
