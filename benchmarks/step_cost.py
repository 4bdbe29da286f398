"""Predicted against measured training-step time of every shipped planned bundle, on this machine.

``medseg plan`` predicts a CPU step's time from its FLOPs (:mod:`medseg.plan.budget`: 100 GFLOP/s on
2 cores plus 10 ms); ``medseg plan --measure`` times real steps instead (:func:`medseg.plan.cost.
measure_step`: forward, Dice-CE, backward, AdamW; median of ``--steps`` after a warm-up). For each
bundle with a ``plans/plan.json`` this prints, side by side in one run: the prediction, the measured
step of the planned network at its patch and batch (channels-last weights where its training uses
them), their ratio, and the time per step its recorded training run showed (``plans/training.json``:
wall minutes over epochs x steps per epoch, so validation and data caching are included, on the
machine and load that run had).

Usage::

    python benchmarks/step_cost.py [--steps 3] [--out benchmarks/results/step_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from medseg.plan.cost import measure_step
from medseg.render.records import read_plan, read_record

REPO = Path(__file__).resolve().parents[1]


def machine() -> dict:
    """CPU model, cores, torch threads and version, and the load while measuring."""
    import torch

    from medseg.plan.cost import machine_id

    return {
        "cpu": machine_id("cpu"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
    }


def bundle_row(bundle: Path, steps: int) -> dict:
    """One bundle: predicted, measured and recorded-training seconds per step."""
    plan = read_plan(bundle)
    compute = plan["compute"]
    training = plan["training"]
    batch = plan["batch_size"]
    start = time.perf_counter()
    measured = measure_step(
        plan["network"], plan["patch_size"], batch, steps=steps, channels_last=bool(training["channels_last"])
    )
    record = read_record(bundle)
    recorded = None
    if record is not None:
        recorded = (
            60 * float(record["wall_minutes"]) / (int(record["epochs"]) * int(compute["steps_per_epoch"]))
        )
    return {
        "bundle": bundle.name,
        "patch_size": plan["patch_size"],
        "batch_size": batch,
        "predicted_s": compute["seconds_per_step"],
        "measured_s": round(measured, 4),
        "measured_over_predicted": round(measured / compute["seconds_per_step"], 2),
        "recorded_training_s": None if recorded is None else round(recorded, 4),
        "measuring_s": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per bundle (after one warm-up)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "step_cost.json")
    args = parser.parse_args()
    bundles = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/plans/plan.json"))
    rows = [bundle_row(bundle, args.steps) for bundle in bundles]
    info = machine()
    print(f"machine: {info}")
    print(
        "| bundle | patch x batch | predicted s/step | measured s/step | measured/predicted | recorded training s/step |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        recorded = "-" if row["recorded_training_s"] is None else f"{row['recorded_training_s']:.3f}"
        print(
            f"| {row['bundle']} | {'x'.join(map(str, row['patch_size']))} x {row['batch_size']} | "
            f"{row['predicted_s']:.3f} | {row['measured_s']:.3f} | {row['measured_over_predicted']:.1f} | {recorded} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "steps": args.steps, "bundles": rows}, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
