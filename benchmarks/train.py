"""Time-to-accuracy: medseg's hippocampus_unet3d recipe against the plain MONAI spleen-style recipe.

Both run through the same bundle machinery (`bundles/hippocampus_unet3d/configs/train.json`,
folds 2-4 train, fold 1, the validation fold, validates every epoch; fold 0 is the test fold and no
decision looks at it), side by side in one run on the same machine, each in its own subprocess. The baseline is the model zoo's spleen_ct_segmentation train.json
pattern adapted only in patch size: UNet 16..256 (strides 2,2,2,2, batch norm), Dice-CE
(include_background false, squared_pred, batch), Novograd 2e-3 without schedule, random
32x48x32 crops by positive/negative label (4 samples per image), batch 2, two loader worker
processes, sliding-window validation at the crop size (plus the padding to the crop size that
these small crops need). It runs twice: with its two loader workers and loading in the main
process; the speed-up is taken against the faster of the two. Both recipes normalise each image
on its own (MR; no CT window).

medseg's recipe is the bundle's train.json as shipped: a light residual U-Net (16-128 channels),
whole-crop 40x56x40 patches, batch 2, AdamW 5e-3 with cosine decay and no warm-up, batch
Dice-CE, and an exponential moving average of the weights that is validated and saved. On CPU
it also stores the weights channels-last (oneDNN's fast layout for 3-D convolutions), feeds
plain tensors to the network, switches MONAI's metadata tracking off once the datasets are
cached (training needs no metadata), one-hot encodes predictions for the Dice metric without
``torch.argmax`` (slow over the channel axis on CPU), and pads single validation windows to a
batch of two (``medseg.networks.PadBatch``: PyTorch runs one-sample 3-D convolutions on a slow
reference kernel). The baseline keeps MONAI's defaults for all five.

Measured per recipe: wall time from the start of training until the fold-1 mean Dice first
reaches the target, training iterations and samples per second, and peak RSS. ``--precisions fp32
bf16`` runs each recipe in each precision (bf16: the networks' forward passes under bf16 autocast
with fp32 master weights, as ``medseg train --precision bf16``; :mod:`medseg.precision`), and the
results record the CPU model and its flags (bf16 units or not).

    python benchmarks/train.py [--target 0.85] [--cap-minutes 30] [--repeats 3] [--precisions fp32 bf16]
        [--out benchmarks/results/train.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"

BASELINE_OVERRIDES = {
    "network_def": {
        "_target_": "monai.networks.nets.UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": "@num_classes",
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "norm": "batch",
    },
    "loss": {
        "_target_": "DiceCELoss",
        "include_background": False,
        "to_onehot_y": True,
        "softmax": True,
        "squared_pred": True,
        "batch": True,
        "smooth_nr": 1e-05,
        "smooth_dr": 1e-05,
    },
    "optimizer": {"_target_": "monai.optimizers.Novograd", "params": "$@network.parameters()", "lr": 0.002},
    "lr_scheduler": {
        "_target_": "torch.optim.lr_scheduler.LambdaLR",
        "optimizer": "@optimizer",
        "lr_lambda": "$lambda step: 1.0",
    },
    "roi_size": [32, 48, 32],
    "batch_size": 2,
    "max_epochs": 1000,
    "num_workers": 2,
    # The plain recipe: raw network validated and saved, MONAI's default batch preparation,
    # default memory layout, metadata tracked throughout, single validation windows run as
    # they come, MONAI's AsDiscreted before the metrics.
    "train#ema#enabled": False,
    "train#trainer#prepare_batch": "$monai.engines.default_prepare_batch",
    "channels_last": False,
    "track_meta_in_training": True,
    "validate#evaluator#network": "@network",
    "validate#postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {
                "_target_": "AsDiscreted",
                "keys": ["pred", "label"],
                "argmax": [True, False],
                "to_onehot": "@num_classes",
            }
        ],
    },
    "train#random_transforms": [
        # Some hippocampus crops are smaller than the patch (24 slices): pad first, as any user must.
        {"_target_": "SpatialPadd", "keys": ["image", "label"], "spatial_size": "@roi_size"},
        {
            "_target_": "RandCropByPosNegLabeld",
            "keys": ["image", "label"],
            "label_key": "label",
            "spatial_size": "@roi_size",
            "pos": 1,
            "neg": 1,
            "num_samples": 4,
            "image_key": "image",
            "image_threshold": 0,
        },
    ],
}


RECIPES: dict[str, dict] = {
    "medseg hippocampus_unet3d": {},
    "spleen-style baseline": BASELINE_OVERRIDES,
    # The same baseline loading its data in the main process, as medseg's recipe does on CPU:
    # on 2 cores, loader worker processes compete with the network for the CPU.
    "spleen-style baseline, in-process loading": {**BASELINE_OVERRIDES, "num_workers": 0},
}


VAL_FOLD = 1  # the bundle's validation fold; folds 2-4 train


def precision_overrides_for(name: str, precision: str) -> tuple[dict, dict]:
    """The overrides that run recipe ``name``'s networks in ``precision``, and the resolved precision."""
    import torch
    from monai.bundle import ConfigParser

    from medseg.bundle.train import TRAIN_NETWORKS
    from medseg.precision import precision_overrides, resolve_precision

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    for key, value in RECIPES[name].items():  # the recipe's own networks are the ones wrapped
        parser[key] = value
    chosen = resolve_precision(precision, "cuda" if torch.cuda.is_available() else "cpu", training=True)
    return precision_overrides(parser.get(), chosen, TRAIN_NETWORKS), chosen.as_dict()


def run_recipe(name: str, target: float, cap_minutes: float, out_dir: Path, precision: str = "fp32") -> dict:
    """Train one recipe in one precision until the target Dice or the cap; runs inside its own process."""
    from ignite.engine import Events

    from medseg.bundle import open_bundle, run_workflow
    from medseg.bundle.train import fold_overrides

    overrides = dict(RECIPES[name])
    # Both validate every epoch; everything else (epochs, schedule) is the recipe's own.
    overrides.update(
        output_dir=str(out_dir), ckpt_dir=str(out_dir / "models"), val_interval=1, progress=False
    )
    overrides.update(fold_overrides(VAL_FOLD))
    reduced, chosen = precision_overrides_for(name, precision)
    overrides.update(reduced)
    workflow = run_workflow(open_bundle(BUNDLE), ["train.json"], run=False, **overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    state = {
        "start": None,
        "reached_s": None,
        "reached_epoch": None,
        "best": 0.0,
        "iterations": 0,
        "samples": 0,
    }

    @trainer.on(Events.STARTED)
    def _start(engine) -> None:
        state["start"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _count(engine) -> None:
        state["iterations"] += 1
        batch = engine.state.batch
        state["samples"] += len(batch) if isinstance(batch, list) else int(batch["image"].shape[0])
        if time.perf_counter() - state["start"] > cap_minutes * 60:
            engine.terminate()

    @evaluator.on(Events.COMPLETED)
    def _check(engine) -> None:
        dice = float(engine.state.metrics["val_mean_dice"])
        state["best"] = max(state["best"], dice)
        if dice >= target and state["reached_s"] is None:
            state["reached_s"] = time.perf_counter() - state["start"]
            state["reached_epoch"] = trainer.state.epoch
            trainer.terminate()

    workflow.run()
    workflow.finalize()
    elapsed = time.perf_counter() - state["start"]
    return {
        "recipe": name,
        "precision": chosen,
        "val_fold": VAL_FOLD,
        "target": target,
        "minutes_to_target": None if state["reached_s"] is None else state["reached_s"] / 60,
        "epoch_reached": state["reached_epoch"],
        "best_dice": state["best"],
        "train_minutes": elapsed / 60,
        "iterations_per_s": state["iterations"] / elapsed,
        "samples_per_s": state["samples"] / elapsed,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--cap-minutes", type=float, default=30.0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "train.json"))
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds; medians are reported")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=("fp32", "bf16", "auto"),
        default=["fp32"],
        help="run every recipe in each of these precisions (medseg.precision; default fp32)",
    )
    parser.add_argument("--recipe", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="medseg-train-bench-"))
    if args.recipe:  # child process: one recipe, result as JSON on the last line
        result = run_recipe(args.recipe, args.target, args.cap_minutes, work, args.precision)
        print(json.dumps(result))
        return

    # Interleaved rounds (every recipe in every precision once per round), so that a slow spell of a
    # shared machine hits all rows alike; each row is reported by its median run.
    rows = [(recipe, precision) for recipe in RECIPES for precision in args.precisions]
    runs: dict[str, list[dict]] = {_label(*row, args.precisions): [] for row in rows}
    for round_index in range(args.repeats):
        for index, (recipe, precision) in enumerate(rows):
            command = [
                sys.executable,
                __file__,
                "--recipe",
                recipe,
                "--precision",
                precision,
                "--target",
                str(args.target),
                "--cap-minutes",
                str(args.cap_minutes),
                "--work",
                str(work / f"round{round_index}-run{index}"),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"{recipe} ({precision}) failed:\n{done.stderr[-3000:]}")
            runs[_label(recipe, precision, args.precisions)].append(
                json.loads(done.stdout.strip().splitlines()[-1])
            )
    results = [_median_run(row_runs) for row_runs in runs.values()]

    cpu = _cpu()
    machine = (
        f"{cpu['model']}, {os.cpu_count()} logical CPUs, bf16 units: {', '.join(cpu['bf16_units']) or 'none'}, "
        + ("no GPU" if not _cuda() else "CUDA")
    )
    speedups = {}
    lines = [
        f"Time to fold-{VAL_FOLD} mean Dice {args.target} (validation every epoch; folds 2-4 train), machine: "
        f"{machine}; median of {args.repeats} interleaved run(s) per row; load average {cpu['load_average']} at "
        "the start.",
        "",
        "| recipe | precision | minutes to target | each run | epoch | best Dice seen | iterations/s | samples/s "
        "| peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r, row_runs in zip(results, runs.values(), strict=True):
        minutes = "not reached" if r["minutes_to_target"] is None else f"{r['minutes_to_target']:.2f}"
        each = ", ".join(
            "-" if run["minutes_to_target"] is None else f"{run['minutes_to_target']:.2f}" for run in row_runs
        )
        lines.append(
            f"| {r['recipe']} | {r['precision']['dtype']} | {minutes} | {each} | {r['epoch_reached'] or '-'} | "
            f"{r['best_dice']:.4f} | {r['iterations_per_s']:.2f} | {r['samples_per_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    for precision in args.precisions:
        # medseg against the faster of the two baseline variants, in the same precision
        ours, *baselines = [r for r, row in zip(results, rows, strict=True) if row[1] == precision]
        reached = [b["minutes_to_target"] for b in baselines if b["minutes_to_target"]]
        if ours["minutes_to_target"] and reached:
            speedups[precision] = min(reached) / ours["minutes_to_target"]
            lines += [
                "",
                f"{precision}: medseg reaches {args.target} {speedups[precision]:.2f}x faster than the faster "
                "baseline variant.",
            ]
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "cpu": cpu,
                "repeats": args.repeats,
                "precisions": args.precisions,
                "results": results,
                "runs": runs,
                "speedup": speedups.get(args.precisions[0]),
                "speedup_per_precision": speedups,
                "markdown": "\n".join(lines),
            },
            indent=2,
        )
        + "\n"
    )


def _label(recipe: str, precision: str, precisions: list[str]) -> str:
    """A row's key in the results: the recipe, with its precision when several are run."""
    return recipe if len(precisions) == 1 else f"{recipe} [{precision}]"


def _cpu() -> dict:
    """The CPU's model and flags (:mod:`medseg.precision`), and the machine's load."""
    from medseg.precision import bf16_units, cpu_flags, cpu_model

    flags = cpu_flags()
    return {
        "model": cpu_model() if flags else platform.processor(),
        "bf16_units": bf16_units(flags),
        "flags": sorted(flags),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def _median_run(recipe_runs: list[dict]) -> dict:
    """The run with the median time to target (runs that never reached it count as slowest)."""
    ordered = sorted(
        recipe_runs,
        key=lambda run: float("inf") if run["minutes_to_target"] is None else run["minutes_to_target"],
    )
    return ordered[(len(ordered) - 1) // 2]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
