"""Benchmark the classical baselines on MSD Task04 hippocampus, validation fold 0.

Fold 0 is the fixed validation fold of the project: the case ids sorted, cases whose
index % 5 == 0 (52 of 260). Each method runs with its default options (foreground by the
centre prior, split into anterior/posterior at the median plane of the anterior-posterior
axis; see :mod:`medseg.baselines.classical`). Dice per case and label (1 anterior, 2 posterior),
averaged over cases.

Usage::

    python benchmarks/classical.py [--data DIR] [--out benchmarks/results/classical.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg.baselines import classical
from medseg.data import load_msd_datalist, split_folds
from medseg.paths import data_dir

METHODS = {
    "otsu": classical.otsu_segment,
    "region_growing": classical.region_growing_segment,
    "kmeans": classical.kmeans_segment,
}
LABELS = {1: "anterior", 2: "posterior"}


def default_hippocampus_dir() -> Path:
    """The MSD Task04 folder of the project data (:func:`medseg.paths.data_dir`)."""
    return data_dir("msd-task04-hippocampus")


def dice(pred: np.ndarray, label: np.ndarray, k: int) -> float:
    """Dice of label ``k``; 1.0 when both are empty."""
    p, t = pred == k, label == k
    denominator = p.sum() + t.sum()
    return 1.0 if denominator == 0 else float(2.0 * np.logical_and(p, t).sum() / denominator)


def evaluate(data_dir: Path, fold: int) -> dict:
    # the project's fixed split (sorted case ids, index % 5), as the bundles use it
    cases = split_folds(load_msd_datalist(data_dir), fold)
    per_case: dict[str, list[dict]] = {name: [] for name in METHODS}
    for item in cases:
        cid = item["case_id"]
        image = np.asarray(nib.load(item["image"]).dataobj)
        label = np.asarray(nib.load(item["label"]).dataobj).astype(np.int64)
        for name, method in METHODS.items():
            start = time.perf_counter()
            pred = method(image)
            seconds = time.perf_counter() - start
            per_case[name].append(
                {"case": cid, "seconds": seconds, **{LABELS[k]: dice(pred, label, k) for k in LABELS}}
            )
    summary = {}
    for name, rows in per_case.items():
        means = {LABELS[k]: statistics.mean(r[LABELS[k]] for r in rows) for k in LABELS}
        case_means = [statistics.mean(r[LABELS[k]] for k in LABELS) for r in rows]
        summary[name] = {
            **means,
            "mean": statistics.mean(case_means),
            "mean_std": statistics.stdev(case_means),
            "seconds_per_case": statistics.mean(r["seconds"] for r in rows),
        }
    return {
        "dataset": "MSD Task04 hippocampus",
        "fold": fold,
        "cases": len(cases),
        "summary": summary,
        "per_case": per_case,
    }


def markdown(report: dict) -> str:
    lines = [
        f"{report['dataset']}, fold {report['fold']} ({report['cases']} cases), default options, Dice "
        "(mean over cases; mean = mean of the two labels, +- std over cases).",
        "",
        "| method | Dice anterior | Dice posterior | Dice mean | seconds / case |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in report["summary"].items():
        lines.append(
            f"| {name} | {s['anterior']:.3f} | {s['posterior']:.3f} | {s['mean']:.3f} +- {s['mean_std']:.3f} | "
            f"{s['seconds_per_case']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=default_hippocampus_dir(), help="msd-task04-hippocampus folder"
    )
    parser.add_argument("--fold", type=int, default=0, help="validation fold (index % 5)")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/classical.json"), help="JSON output"
    )
    args = parser.parse_args()
    report = evaluate(args.data, args.fold)
    table = markdown(report)
    report["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
