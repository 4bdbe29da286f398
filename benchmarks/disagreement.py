"""Does the members' disagreement predict the ensemble's error? (hippocampus or left atrium, fold 0)

For every test-fold case: the disagreement of the ensemble bundle's cross-validation members
(:func:`medseg.ensemble.disagreement.image_disagreement`, on the network's grid) and the ensemble's
actual error, 1 - mean Dice over the foreground labels of its segmentation on the case's own grid
(``medseg segment``'s pipeline, the bundle's postprocessing included) against the reference label.
Prints the table's head and the Spearman rank correlation; writes
``benchmarks/results/disagreement.json``. Fold 0 is only measured here: no decision looks at it.

    python benchmarks/disagreement.py --bundle bundles/hippocampus_ensemble
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from medseg.bundle.core import open_bundle
from medseg.bundle.loader import load_inference
from medseg.data import default_data_dir, split_folds
from medseg.data.dataset import load_datalist
from medseg.ensemble.disagreement import image_disagreement, require_members
from medseg.evaluation import case_dice
from medseg.io.image import read_image
from medseg.segment.pipeline import Segmenter

RESULTS = Path(__file__).resolve().parent / "results" / "disagreement.json"
DATASETS = {"hippocampus": "msd-task04-hippocampus", "left_atrium": "la2018-left-atrium"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="bundles/hippocampus_ensemble")
    parser.add_argument("--limit", type=int, default=None, help="first N test-fold cases only")
    args = parser.parse_args()
    from scipy.stats import spearmanr

    bundle = open_bundle(args.bundle)
    dataset = "left_atrium" if "atrium" in bundle.name else "hippocampus"
    items = split_folds(load_datalist(default_data_dir(DATASETS[dataset])), 0)[: args.limit]
    labels = [v for v in bundle.labels if v != 0]
    inference = load_inference(bundle)
    require_members(inference.network, bundle.name)
    segmenter = Segmenter(bundle, parallel_outputs=False, precision="fp32")
    rows = []
    start = time.perf_counter()
    for item in items:
        score = image_disagreement(inference, item["image"], labels)
        prediction = segmenter.predict_input(item["image"]).labelmap
        truth, _ = read_image(item["label"])
        dice = float(
            np.nanmean(case_dice(np.asarray(prediction), np.rint(np.asarray(truth)).astype(int), labels))
        )
        rows.append(
            {"case": Path(item["image"]).name, "disagreement": round(score, 5), "dice": round(dice, 5)}
        )
    seconds = time.perf_counter() - start
    rho, p = spearmanr([r["disagreement"] for r in rows], [1 - r["dice"] for r in rows])
    result = {
        "bundle": bundle.name,
        "version": bundle.version,
        "members": len(inference.network.weight_files),
        "cases": len(rows),
        "spearman_disagreement_vs_error": round(float(rho), 4),
        "p_value": float(p),
        "mean_dice": round(float(np.mean([r["dice"] for r in rows])), 4),
        "seconds": round(seconds, 1),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} CPUs",
        "rows": rows,
    }
    print(
        f"{bundle.name} {bundle.version}: {len(rows)} fold-0 cases, {result['members']} members, {seconds:.0f} s"
    )
    print("| case | disagreement | Dice |\n|---|---:|---:|")
    for row in sorted(rows, key=lambda r: -r["disagreement"])[:8]:
        print(f"| {row['case']} | {row['disagreement']:.4f} | {row['dice']:.4f} |")
    print(f"Spearman(disagreement, 1 - Dice) = {rho:.3f} (p = {p:.2g}); mean Dice {result['mean_dice']}")
    found = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    found[bundle.name] = result
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
