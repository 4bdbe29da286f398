"""bf16 autocast against fp32 on this CPU: speed of the networks and of a training step, and accuracy
and time of ``medseg evaluate`` for every shipped bundle on all its fold-0 (test-fold) cases.

``--precision auto`` (:mod:`medseg.precision`) picks bf16 only on CPUs with AMX or AVX-512-BF16;
this script measures what that choice gives on the machine it runs on, both precisions side by side
in one run (interleaved, so a slow spell of a shared machine hits both alike):

1. forward of each bundle's network over one sliding-window batch of its ``roi_size`` (channels-last
   weights, as medseg runs CPU networks), median of ``--repeats`` after a warm-up; wall time and the
   process's CPU time (on a machine shared with other work the CPU time is the steadier figure);
2. one training step (forward, Dice-CE loss, backward, SGD) of ``hippocampus_unet3d``'s network,
   batch 2 of 40x56x40 (its training patch), fp32 master weights in both;
3. ``medseg.bundle.evaluate_bundle`` of every shipped bundle on fold 0: mean Dice per precision, the
   difference (the bar: at most 0.002) and the wall time of each evaluation. The CI test
   (``tests/test_precision.py``) checks the first 8 fold-0 cases of each bundle (4 of an ensemble);
   this checks all.

4. ``--curve EPOCHS``: instead of 1-3, the fold-1 training curve of ``hippocampus_unet3d`` in both
   precisions: two trainings side by side (one core each with ``taskset``, one torch thread),
   folds 2-4 train, fold 1 (its validation fold) validates every ``--val-interval`` epochs, the
   same fixed number of epochs and seed; records each validation's fold-1 mean Dice and each
   epoch's training seconds (wall and CPU time, validation excluded). The bundle is copied to a
   scratch folder first, so nothing under ``bundles/`` changes.

Usage::

    python benchmarks/precision.py [--repeats 5] [--bundles NAME ...] [--out benchmarks/results/precision.json]
    python benchmarks/precision.py --curve 30 --val-interval 3 --out benchmarks/results/precision_curve.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


def machine() -> dict:
    """CPU model and bf16 flags, threads, versions and load."""
    import monai
    import torch

    from medseg.precision import bf16_units, cpu_flags, cpu_model, resolve_precision

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "bf16_flags": bf16_units(flags),
        "amx": sorted(f for f in flags if f.startswith("amx")),
        "avx512f": "avx512f" in flags,
        "auto_picks": resolve_precision("auto", "cpu").dtype,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }


def forward_speed(names: list[str], repeats: int) -> list[dict]:
    """(1) each bundle's network over one window batch of its roi, fp32 and bf16."""
    import torch

    from medseg.bundle import open_bundle
    from medseg.bundle.loader import load_inference
    from medseg.networks import Autocast, ChannelsLast

    rows = []
    for name in names:
        inference = load_inference(open_bundle(REPO / "bundles" / name))
        roi, inferer = inference.roi_size, inference.inferer
        if roi is None:  # an ensemble: time its members' window
            groups = getattr(inference.network, "groups", [])
            inner = groups[0].inferer if groups else None
            roi = [int(v) for v in getattr(inner, "roi_size", [])] or None
            inferer = inner
        if roi is None:
            continue
        batch = int(getattr(inferer, "sw_batch_size", 1) or 1)
        network = ChannelsLast(inference.network)
        x = torch.randn(batch, 1, *roi)
        models = {"fp32": network, "bf16": Autocast(network)}
        times: dict = {p: [] for p in PRECISIONS}
        cpu: dict = {p: [] for p in PRECISIONS}
        with torch.inference_mode():
            for p in PRECISIONS:
                models[p](x)
            for _ in range(repeats):  # interleaved
                for p in PRECISIONS:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    models[p](x)
                    times[p].append(time.perf_counter() - start)
                    cpu[p].append(time.process_time() - start_cpu)
        ms = {p: round(statistics.median(times[p]) * 1000, 1) for p in PRECISIONS}
        cpu_ms = {p: round(statistics.median(cpu[p]) * 1000, 1) for p in PRECISIONS}
        rows.append(
            {
                "bundle": name,
                "input": [batch, 1, *roi],
                "ms": ms,
                "speedup": round(ms["fp32"] / ms["bf16"], 2),
                "cpu_ms": cpu_ms,
                "cpu_speedup": round(cpu_ms["fp32"] / cpu_ms["bf16"], 2),
            }
        )
        print(f"forward {name} {rows[-1]['input']}: {ms} ({rows[-1]['speedup']}x)", file=sys.stderr)
    return rows


def train_step_speed(repeats: int) -> dict:
    """(2) a training step of hippocampus_unet3d's network, batch 2 of 40x56x40."""
    import torch
    from monai.bundle import ConfigParser

    from medseg.networks import Autocast, to_channels_last

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "hippocampus_unet3d" / "configs" / "train.json"))
    parser["bundle_root"] = str(REPO / "bundles" / "hippocampus_unet3d")
    torch.manual_seed(0)
    network = to_channels_last(parser.get_parsed_content("network_def")).train()
    loss_fn = parser.get_parsed_content("loss")  # the bundle's own Dice-CE
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(2, 1, 40, 56, 40)
    y = torch.randint(0, 3, (2, 1, 40, 56, 40))
    models = {"fp32": network, "bf16": Autocast(network)}

    def step(model) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    times: dict = {p: [] for p in PRECISIONS}
    cpu: dict = {p: [] for p in PRECISIONS}
    for p in PRECISIONS:
        step(models[p])
    for _ in range(repeats):
        for p in PRECISIONS:
            start, start_cpu = time.perf_counter(), time.process_time()
            step(models[p])
            times[p].append(time.perf_counter() - start)
            cpu[p].append(time.process_time() - start_cpu)
    ms = {p: round(statistics.median(times[p]) * 1000, 1) for p in PRECISIONS}
    cpu_ms = {p: round(statistics.median(cpu[p]) * 1000, 1) for p in PRECISIONS}
    print(f"train step: {ms}, CPU {cpu_ms}", file=sys.stderr)
    return {
        "network": "hippocampus_unet3d",
        "input": [2, 1, 40, 56, 40],
        "ms": ms,
        "speedup": round(ms["fp32"] / ms["bf16"], 2),
        "cpu_ms": cpu_ms,
        "cpu_speedup": round(cpu_ms["fp32"] / cpu_ms["bf16"], 2),
    }


def evaluate_all(names: list[str], save) -> list[dict]:
    """(3) evaluate_bundle on fold 0 in both precisions, bundle by bundle; the order of the two
    alternates from one bundle to the next (a first run may pay cold file reads). ``save`` is called
    with the rows after each bundle."""
    from medseg.bundle import evaluate_bundle, open_bundle

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="medseg-precision-") as tmp:
        for index, name in enumerate(names):
            bundle = open_bundle(REPO / "bundles" / name)
            runs = {}
            for p in PRECISIONS if index % 2 == 0 else PRECISIONS[::-1]:
                result = evaluate_bundle(bundle, fold=0, output=Path(tmp) / f"{name}-{p}.json", precision=p)
                runs[p] = {
                    "mean_dice": round(result["metrics"]["val_mean_dice"], 5),
                    "seconds": result["seconds"],
                    "dtype": result["precision"]["dtype"],
                }
            diff = runs["bf16"]["mean_dice"] - runs["fp32"]["mean_dice"]
            rows.append(
                {
                    "bundle": name,
                    "cases": result["cases"],
                    "runs": runs,
                    "dice_diff": round(diff, 5),
                    "within_0.002": abs(diff) <= 0.002,
                    "time_ratio_bf16_fp32": round(runs["bf16"]["seconds"] / runs["fp32"]["seconds"], 3),
                }
            )
            print(f"evaluate {name}: {rows[-1]}", file=sys.stderr)
            save(rows)
    return rows


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['torch_threads']} torch threads), "
        f"bf16 units: {', '.join(m['bf16_flags']) or 'none'}; AMX: {', '.join(m['amx']) or 'none'} "
        f"(`auto` picks {m['auto_picks']}); torch {m['torch']}, MONAI {m['monai']}; load average "
        f"{m['load_average_start']} at the start, {m['load_average_end']} at the end.",
        "",
        "| network forward (one window batch, channels-last) | input | fp32 ms | bf16 ms | speed-up | "
        "CPU-time speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in results["forward"]:
        lines.append(
            f"| {row['bundle']} | {'x'.join(map(str, row['input']))} | {row['ms']['fp32']} | "
            f"{row['ms']['bf16']} | {row['speedup']}x | {row.get('cpu_speedup', '-')}x |"
        )
    t = results.get("train_step")
    if t:
        lines += [
            "",
            "| training step (forward, Dice-CE, backward, SGD) | input | fp32 ms | bf16 ms | speed-up | "
            "CPU-time speed-up |",
            "|---|---|---:|---:|---:|---:|",
            f"| {t['network']} | {'x'.join(map(str, t['input']))} | {t['ms']['fp32']} | {t['ms']['bf16']} | "
            f"{t['speedup']}x | {t.get('cpu_speedup', '-')}x |",
        ]
    if results.get("evaluate"):
        lines += [
            "",
            "| `medseg evaluate` fold 0 | cases | Dice fp32 | Dice bf16 | difference | s fp32 | s bf16 | "
            "time bf16/fp32 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in results["evaluate"]:
            r = row["runs"]
            lines.append(
                f"| {row['bundle']} | {row['cases']} | {r['fp32']['mean_dice']:.4f} | "
                f"{r['bf16']['mean_dice']:.4f} | {row['dice_diff']:+.4f} | {r['fp32']['seconds']:.1f} | "
                f"{r['bf16']['seconds']:.1f} | {row['time_ratio_bf16_fp32']:.2f} |"
            )
    return "\n".join(lines) + "\n"


CURVE_BUNDLE = "hippocampus_unet3d"
CURVE_FOLD = 1  # the bundle's validation fold; fold 0 is the test fold and is never looked at


def curve_run(precision: str, bundle_dir: Path, epochs: int, val_interval: int, work: Path) -> dict:
    """(4) one training of the curve, in this process: per-epoch training seconds and each fold-1
    validation's mean Dice."""
    from ignite.engine import Events

    from medseg.bundle import open_bundle, run_workflow
    from medseg.bundle.train import TRAIN_NETWORKS, _merged_config, fold_overrides
    from medseg.precision import precision_overrides, resolve_precision

    bundle = open_bundle(bundle_dir)
    chosen = resolve_precision(precision, "cpu", training=True)
    overrides = {
        **fold_overrides(CURVE_FOLD),
        **precision_overrides(_merged_config(bundle, ["train.json"]), chosen, TRAIN_NETWORKS),
        "max_epochs": epochs,
        "val_interval": val_interval,
        "output_dir": str(work),
        "ckpt_dir": str(work / "models"),
        "progress": False,
    }
    start = time.perf_counter()
    workflow = run_workflow(bundle, ["train.json"], run=False, **overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    clock: dict = {}
    epochs_s: list[dict] = []
    validations: list[dict] = []

    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    @trainer.on(Events.STARTED)
    def _started(engine) -> None:
        clock["setup_s"] = time.perf_counter() - start  # data caching and engine set-up

    @trainer.on(Events.EPOCH_STARTED)
    def _epoch(engine) -> None:
        clock["epoch"] = clock["last"] = now()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _iteration(engine) -> None:
        clock["last"] = now()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _epoch_done(engine) -> None:  # before the validation handler's own EPOCH_COMPLETED work ends
        (w0, c0), (w1, c1) = clock["epoch"], clock["last"]
        epochs_s.append(
            {
                "epoch": engine.state.epoch,
                "wall_s": round(w1 - w0, 3),
                "cpu_s": round(c1 - c0, 3),
                "end_s": round(w1 - start, 1),  # since the process started: which epochs ran side by side
            }
        )

    @evaluator.on(Events.STARTED)
    def _val_start(engine) -> None:
        clock["val"] = time.perf_counter()

    @evaluator.on(Events.COMPLETED)
    def _val_done(engine) -> None:
        validations.append(
            {
                "epoch": trainer.state.epoch,
                "mean_dice": round(float(engine.state.metrics["val_mean_dice"]), 5),
                "seconds": round(time.perf_counter() - clock["val"], 2),
            }
        )

    workflow.run()
    workflow.finalize()
    walls = [e["wall_s"] for e in epochs_s]
    cpus = [e["cpu_s"] for e in epochs_s]
    return {
        "precision": chosen.as_dict(),
        "setup_s": round(clock.get("setup_s", 0.0), 1),
        "total_s": round(time.perf_counter() - start, 1),
        "median_epoch_s": round(statistics.median(walls), 3),
        "median_epoch_cpu_s": round(statistics.median(cpus), 3),
        "epochs": epochs_s,
        "validations": validations,
        "final_dice": validations[-1]["mean_dice"] if validations else None,
    }


def curves(epochs: int, val_interval: int, out: Path) -> dict:
    """(4) both precisions' trainings side by side, one core and one thread each."""
    cores = sorted(os.sched_getaffinity(0))
    results: dict = {
        "machine": machine(),
        "bundle": CURVE_BUNDLE,
        "val_fold": CURVE_FOLD,
        "train_folds": [2, 3, 4],
        "epochs": epochs,
        "val_interval": val_interval,
        "how": "two trainings side by side, one core each (taskset), OMP_NUM_THREADS=1, same seed and schedule",
    }
    with tempfile.TemporaryDirectory(prefix="medseg-precision-curve-") as tmp:
        bundle_dir = Path(tmp) / CURVE_BUNDLE
        shutil.copytree(
            REPO / "bundles" / CURVE_BUNDLE, bundle_dir, ignore=shutil.ignore_patterns("runs", "cv")
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        children = {}
        for index, precision in enumerate(PRECISIONS):
            core = str(cores[index % len(cores)])
            command = [
                "taskset",
                "-c",
                core,
                sys.executable,
                __file__,
                "--curve",
                str(epochs),
                "--val-interval",
                str(val_interval),
                "--curve-child",
                precision,
                "--curve-bundle",
                str(bundle_dir),
                "--curve-work",
                str(Path(tmp) / f"run-{precision}"),
            ]
            children[precision] = (
                core,
                subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True),
            )
        runs = {}
        for precision, (core, child) in children.items():
            stdout, _ = child.communicate()
            if child.returncode != 0:
                sys.exit(f"the {precision} training failed (exit {child.returncode})")
            runs[precision] = {"core": int(core), **json.loads(stdout.strip().splitlines()[-1])}
    results["runs"] = runs
    results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    summarize(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    return results


def _epoch_ends(run: dict) -> list[float]:
    """When each epoch of a run ended, in seconds since its process started (estimated from the
    set-up, epoch and validation times for a record without ``end_s``)."""
    if all("end_s" in e for e in run["epochs"]):
        return [float(e["end_s"]) for e in run["epochs"]]
    validation = {v["epoch"]: v["seconds"] for v in run["validations"]}
    clock, ends = float(run["setup_s"]), []
    for e in run["epochs"]:
        clock += e["wall_s"]
        ends.append(clock)
        clock += validation.get(e["epoch"], 0.0)
    return ends


def summarize(results: dict) -> dict:
    """The curve's figures: the bf16 speed-up per epoch (median wall and CPU time) over every epoch
    and over the epochs both trainings ran side by side (once the faster one has finished, the other
    has the machine to itself), and how far the two fold-1 curves are apart."""
    runs = results["runs"]
    fp32, bf16 = runs["fp32"], runs["bf16"]
    results["epoch_speedup"] = round(fp32["median_epoch_s"] / bf16["median_epoch_s"], 3)
    results["epoch_cpu_speedup"] = round(fp32["median_epoch_cpu_s"] / bf16["median_epoch_cpu_s"], 3)
    first_end = min(float(fp32["total_s"]), float(bf16["total_s"]))
    side_by_side = {}
    for name, run in runs.items():
        kept = [e for e, end in zip(run["epochs"], _epoch_ends(run), strict=True) if end <= first_end]
        side_by_side[name] = {
            "epochs": len(kept),
            "median_epoch_s": round(statistics.median(e["wall_s"] for e in kept), 3),
            "median_epoch_cpu_s": round(statistics.median(e["cpu_s"] for e in kept), 3),
        }
    results["side_by_side"] = {
        "until_s": round(first_end, 1),
        **side_by_side,
        "epoch_speedup": round(
            side_by_side["fp32"]["median_epoch_s"] / side_by_side["bf16"]["median_epoch_s"], 3
        ),
        "epoch_cpu_speedup": round(
            side_by_side["fp32"]["median_epoch_cpu_s"] / side_by_side["bf16"]["median_epoch_cpu_s"], 3
        ),
    }
    results["final_dice_diff"] = round(bf16["final_dice"] - fp32["final_dice"], 5)
    results["curve_max_abs_diff"] = round(
        max(
            abs(a["mean_dice"] - b["mean_dice"])
            for a, b in zip(fp32["validations"], bf16["validations"], strict=True)
        ),
        5,
    )
    return results


def curve_markdown(results: dict) -> str:
    m, runs = results["machine"], results["runs"]
    lines = [
        f"{results['bundle']}, folds {'-'.join(map(str, results['train_folds'][:: len(results['train_folds']) - 1]))} "
        f"train, fold {results['val_fold']} validates every {results['val_interval']} epochs, {results['epochs']} "
        f"epochs; {m['cpu']}, {results['how']}; load average {m['load_average_start']} at the start, "
        f"{m['load_average_end']} at the end.",
        "",
        "| epoch | fold-1 Dice fp32 | fold-1 Dice bf16 | difference |",
        "|---:|---:|---:|---:|",
    ]
    for a, b in zip(runs["fp32"]["validations"], runs["bf16"]["validations"], strict=True):
        lines.append(
            f"| {a['epoch']} | {a['mean_dice']:.4f} | {b['mean_dice']:.4f} | "
            f"{b['mean_dice'] - a['mean_dice']:+.4f} |"
        )
    both = results["side_by_side"]
    lines += [
        "",
        f"Seconds per training epoch (median; validation excluded): fp32 {runs['fp32']['median_epoch_s']} "
        f"({runs['fp32']['median_epoch_cpu_s']} CPU), bf16 {runs['bf16']['median_epoch_s']} "
        f"({runs['bf16']['median_epoch_cpu_s']} CPU): bf16 {results['epoch_speedup']}x "
        f"({results['epoch_cpu_speedup']}x in CPU time). Over the epochs both ran side by side (the first "
        f"{both['until_s']} s: {both['fp32']['epochs']} fp32 and {both['bf16']['epochs']} bf16 epochs): "
        f"{both['epoch_speedup']}x ({both['epoch_cpu_speedup']}x in CPU time). Wall time per run: fp32 "
        f"{runs['fp32']['total_s']} s, bf16 {runs['bf16']['total_s']} s.",
        "",
        f"Final fold-1 mean Dice: fp32 {runs['fp32']['final_dice']:.4f}, bf16 {runs['bf16']['final_dice']:.4f} "
        f"({results['final_dice_diff']:+.4f}); the largest gap between the two curves "
        f"{results['curve_max_abs_diff']:.4f}.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--bundles", nargs="+", default=None, help="default: every shipped bundle with weights"
    )
    parser.add_argument(
        "--skip-evaluate", action="store_true", help="only the forward and training-step timings"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="default: benchmarks/results/precision.json (with --curve: precision_curve.json)",
    )
    parser.add_argument("--curve", type=int, metavar="EPOCHS", help="(4) the fold-1 training curves instead")
    parser.add_argument(
        "--val-interval", type=int, default=3, help="with --curve: epochs between validations"
    )
    parser.add_argument("--curve-summary", metavar="JSON", help="recompute a saved curve's figures and table")
    parser.add_argument("--curve-child", choices=PRECISIONS, help=argparse.SUPPRESS)
    parser.add_argument("--curve-bundle", help=argparse.SUPPRESS)
    parser.add_argument("--curve-work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    results_dir = REPO / "benchmarks" / "results"
    if args.curve_child:  # one training of the curve, its result as JSON on the last line
        result = curve_run(
            args.curve_child, Path(args.curve_bundle), args.curve, args.val_interval, Path(args.curve_work)
        )
        print(json.dumps(result))
        return 0
    if args.curve_summary:  # the figures and table again from a saved curve (--out: where to write it)
        results = summarize(json.loads(Path(args.curve_summary).read_text()))
        Path(args.out or args.curve_summary).write_text(json.dumps(results, indent=2) + "\n")
        print(curve_markdown(results))
        return 0
    if args.curve:
        print(
            curve_markdown(
                curves(args.curve, args.val_interval, Path(args.out or results_dir / "precision_curve.json"))
            )
        )
        return 0
    args.out = args.out or str(results_dir / "precision.json")

    from medseg.bundle import open_bundle
    from medseg.bundle.loader import weight_files

    names = args.bundles or sorted(
        p.name
        for p in (REPO / "bundles").iterdir()
        if (p / "configs" / "metadata.json").is_file()
        and all(f.is_file() for f in weight_files(open_bundle(p)))
    )
    results: dict = {"machine": machine()}

    def save(rows: list[dict] | None = None) -> None:  # after each part, so a long run keeps what it measured
        if rows is not None:
            results["evaluate"] = rows
        results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")

    results["forward"] = forward_speed(names, args.repeats)
    results["train_step"] = train_step_speed(args.repeats * 4)
    save([])
    if not args.skip_evaluate:
        evaluate_all(names, save)
    save()
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
