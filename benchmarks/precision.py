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

Usage::

    python benchmarks/precision.py [--repeats 5] [--bundles NAME ...] [--out benchmarks/results/precision.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
        rows.append({"bundle": name, "input": [batch, 1, *roi], "ms": ms, "speedup": round(ms["fp32"] / ms["bf16"], 2),
                     "cpu_ms": cpu_ms, "cpu_speedup": round(cpu_ms["fp32"] / cpu_ms["bf16"], 2)})
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
    return {"network": "hippocampus_unet3d", "input": [2, 1, 40, 56, 40], "ms": ms,
            "speedup": round(ms["fp32"] / ms["bf16"], 2), "cpu_ms": cpu_ms,
            "cpu_speedup": round(cpu_ms["fp32"] / cpu_ms["bf16"], 2)}


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
            rows.append({
                "bundle": name,
                "cases": result["cases"],
                "runs": runs,
                "dice_diff": round(diff, 5),
                "within_0.002": abs(diff) <= 0.002,
                "time_ratio_bf16_fp32": round(runs["bf16"]["seconds"] / runs["fp32"]["seconds"], 3),
            })
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
        lines.append(f"| {row['bundle']} | {'x'.join(map(str, row['input']))} | {row['ms']['fp32']} | "
                     f"{row['ms']['bf16']} | {row['speedup']}x | {row.get('cpu_speedup', '-')}x |")
    t = results.get("train_step")
    if t:
        lines += ["", "| training step (forward, Dice-CE, backward, SGD) | input | fp32 ms | bf16 ms | speed-up | "
                  "CPU-time speed-up |", "|---|---|---:|---:|---:|---:|",
                  f"| {t['network']} | {'x'.join(map(str, t['input']))} | {t['ms']['fp32']} | {t['ms']['bf16']} | "
                  f"{t['speedup']}x | {t.get('cpu_speedup', '-')}x |"]
    if results.get("evaluate"):
        lines += ["", "| `medseg evaluate` fold 0 | cases | Dice fp32 | Dice bf16 | difference | s fp32 | s bf16 | "
                  "time bf16/fp32 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for row in results["evaluate"]:
            r = row["runs"]
            lines.append(f"| {row['bundle']} | {row['cases']} | {r['fp32']['mean_dice']:.4f} | "
                         f"{r['bf16']['mean_dice']:.4f} | {row['dice_diff']:+.4f} | {r['fp32']['seconds']:.1f} | "
                         f"{r['bf16']['seconds']:.1f} | {row['time_ratio_bf16_fp32']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bundles", nargs="+", default=None, help="default: every shipped bundle with weights")
    parser.add_argument("--skip-evaluate", action="store_true", help="only the forward and training-step timings")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "precision.json"))
    args = parser.parse_args()

    from medseg.bundle import open_bundle
    from medseg.bundle.loader import weight_files

    names = args.bundles or sorted(
        p.name for p in (REPO / "bundles").iterdir()
        if (p / "configs" / "metadata.json").is_file() and all(f.is_file() for f in weight_files(open_bundle(p)))
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
