"""The click protocol in process and through ``medseg serve``'s HTTP API, side by side (fold 0).

For each test-fold case the simulated user of :mod:`medseg.interactive.protocol` corrects the
interactive bundle twice in one run: in process (:class:`medseg.interactive.session.ClickPredictor`,
what ``medseg evaluate --clicks`` measures) and through a real MONAI Label server started by
``medseg serve``'s launcher, each prediction one ``POST /infer/<model>`` with the image uploaded
and the clicks in ``params`` as 3D Slicer sends them. Prints mean Dice after each click count both
ways and the HTTP round trip's time per click (median and 90th percentile, upload and answer
included), and writes the bundle's entry of ``benchmarks/results/interactive.json`` (one entry per
bundle, the others kept). Fold 0 is only measured here.

    python benchmarks/interactive.py --bundle bundles/hippocampus_interactive --clicks 0 1 3 5
    python benchmarks/interactive.py --bundle bundles/left_atrium_interactive --clicks 0 1 3 5
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "interactive.json"
sys.path.insert(0, str(REPO / "workflows"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="bundles/hippocampus_interactive")
    parser.add_argument("--clicks", type=int, nargs="+", default=[0, 1, 3, 5])
    parser.add_argument("--limit", type=int, default=None, help="first N test-fold cases only")
    args = parser.parse_args()
    import nibabel as nib
    from http_client import call

    from medseg.bundle.core import open_bundle
    from medseg.data import split_folds
    from medseg.data.dataset import load_datalist
    from medseg.evaluation import mean_dice
    from medseg.interactive.protocol import run_protocol
    from medseg.interactive.session import ClickPredictor
    from medseg.precision import cpu_model
    from medseg.serve.launcher import LabelServer, find_label_python
    from medseg.serve.workdir import discover_bundles, prepare_workdir

    bundle = open_bundle(args.bundle)
    predictor = ClickPredictor(bundle)
    names = {value: name for name, value in predictor.label_names.items()}
    labels = {value: bundle.labels.get(value, name) for value, name in names.items()}
    dataset = predictor.inference.parser.get_parsed_content("dataset_dir")
    items = split_folds(load_datalist(dataset), 0)[: args.limit]
    root = Path(tempfile.mkdtemp(prefix="medseg-bench-clicks-"))
    studies = root / "studies"
    studies.mkdir()
    prepared = prepare_workdir(
        root / "work", str(studies), discover_bundles(bundle.root.parent, [bundle.name])
    )
    server = LabelServer(find_label_python(), prepared, log=root / "server.log", infer_workers=1)
    server.start()
    seconds: list[float] = []
    local: dict[int, dict[str, list[float]]] = {k: {} for k in args.clicks}
    served: dict[int, dict[str, list[float]]] = {k: {} for k in args.clicks}
    try:
        server.wait_ready(timeout=600)

        def over_http(image: Path, clicks: dict) -> np.ndarray:
            started = time.perf_counter()
            response = call(
                "POST",
                f"{server.url}/infer/{bundle.name}?output=image",
                fields={"params": json.dumps(clicks)},
                files={"file": (image.name, image.read_bytes())},
                timeout=300,
            )
            seconds.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{image.name}: {response.status} {response.detail}")
            raw = gzip.decompress(response.body) if response.body[:2] == b"\x1f\x8b" else response.body
            return np.rint(np.asarray(nib.Nifti1Image.from_bytes(raw).dataobj)).astype(np.int16)

        for item in items:
            image = Path(item["image"])
            truth = np.rint(np.asarray(nib.load(item["label"]).dataobj)).astype(np.int16)
            ready = predictor.prepare(str(image))
            in_process = run_protocol(lambda c, r=ready: predictor.predict(r, c), truth, names, args.clicks)
            http = run_protocol(lambda c, i=image: over_http(i, c), truth, names, args.clicks)
            for k in args.clicks:
                local[k][item["case_id"]] = in_process[k]
                served[k][item["case_id"]] = http[k]
            print(f"{item['case_id']}: " + ", ".join(f"{k}: {np.mean(http[k]):.3f}" for k in args.clicks))
    finally:
        server.stop()
    table = {
        k: {
            "in_process": mean_dice(local[k], labels)["mean_dice"],
            "http": mean_dice(served[k], labels)["mean_dice"],
        }
        for k in args.clicks
    }
    cores = os.cpu_count()
    machine = f"{cpu_model()}, {cores} cores, CPU only"
    print(f"\n{bundle.name} {bundle.version}, fold 0, {len(items)} cases; {machine}")
    print(f"{'clicks':>6} {'in process':>11} {'HTTP':>7} {'diff':>7}")
    for k, row in table.items():
        print(
            f"{k:>6} {row['in_process']:>11.4f} {row['http']:>7.4f} {row['http'] - row['in_process']:>+7.4f}"
        )
    median, p90 = float(np.median(seconds)), float(np.percentile(seconds, 90))
    print(
        f"HTTP round trip per click: median {median:.2f} s, 90th percentile {p90:.2f} s ({len(seconds)} requests)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(RESULTS.read_text()).get("bundles", {}) if RESULTS.is_file() else {}
    runs[bundle.name] = {
        "version": bundle.version,
        "fold": 0,
        "cases": len(items),
        "machine": machine,
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
        "mean_dice_clicks": {str(k): v for k, v in table.items()},
        "largest_difference": round(max(abs(row["http"] - row["in_process"]) for row in table.values()), 4),
        "round_trip_seconds": {"median": round(median, 3), "p90": round(p90, 3), "requests": len(seconds)},
    }
    RESULTS.write_text(json.dumps({"bundles": dict(sorted(runs.items()))}, indent=2) + "\n")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
