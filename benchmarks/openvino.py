"""OpenVINO against PyTorch for a bundle's network forward on this CPU, fp32 and bf16, side by side.

medseg runs its networks with PyTorch: channels-last weights on CPU, under bf16 autocast where the
CPU has bf16 units (:mod:`medseg.precision`). OpenVINO compiles the same network for the CPU and
has its own bf16 path (``INFERENCE_PRECISION_HINT``); on an AVX2 machine without bf16 its fp32 was
about 1.1x torch's. This script times, on the machine it runs on:

* torch fp32: the bundle's network, channels-last (``medseg.networks.ChannelsLast``), as medseg runs it;
* torch bf16: the same under bf16 autocast (``medseg.networks.Autocast``);
* OpenVINO f32 and bf16: ``openvino.convert_model`` of the same module (an example input of one
  sliding-window batch), compiled for the CPU with ``INFERENCE_PRECISION_HINT`` f32 or bf16.

Each runs one sliding-window batch of the bundle (``sw_batch_size`` x C x ``roi_size`` from its
``configs/inference.json``), built from real fold-1 cases (the validation fold; fold 0, the test
fold, is not looked at) through the bundle's own preprocessing and padded or cropped to the window.
The four run interleaved (a slow spell of a shared machine hits all alike), with the same number of
threads, after a warm-up; the median wall and CPU time of ``--repeats`` runs is reported, and each
output is compared with torch fp32's: the largest absolute difference of the softmax and the share
of voxels whose argmax agrees. ``--append`` adds the run to the JSON's ``runs`` (e.g. one with
``--threads 1``, or with ``OMP_WAIT_POLICY=PASSIVE`` in the environment, which the run records).

OpenVINO is not one of medseg's requirements; run this from an environment that has it and
medseg's own packages (``pip install openvino``).

Usage::

    python benchmarks/openvino.py [--repeats 15] [--threads 2] [--bundles NAME ...] [--append]
        [--out benchmarks/results/openvino.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# This file's folder comes first on sys.path and this file is named openvino: drop the folder, so that
# ``import openvino`` finds the package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
BUNDLES = ("hippocampus_unet3d", "left_atrium_unet3d")
VARIANTS = ("torch fp32", "torch bf16", "openvino f32", "openvino bf16")
VAL_FOLD = 1


def machine(threads: int) -> dict[str, Any]:
    """CPU model and bf16 flags, threads, versions and load."""
    import openvino
    import torch

    from medseg.precision import bf16_units, cpu_flags, cpu_model

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "bf16_flags": bf16_units(flags),
        "amx": sorted(f for f in flags if f.startswith("amx")),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "openvino": openvino.__version__,
        "openvino_cpu_capabilities": openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
    }


def window_batch(inference: Any, cases: int) -> Any:
    """One sliding-window batch of real fold-1 cases: each preprocessed by the bundle and padded or
    cropped (about its centre) to the window."""
    import torch
    from monai.transforms import ResizeWithPadOrCrop

    from medseg.data import split_folds
    from medseg.data.dataset import load_datalist

    dataset_dir = inference.parser.get_parsed_content("dataset_dir")
    items = split_folds(load_datalist(dataset_dir), VAL_FOLD)[:cases]
    fit = ResizeWithPadOrCrop(inference.roi_size)
    windows = [fit(inference.preprocessing({"image": item["image"]})["image"]) for item in items]
    return torch.stack([torch.as_tensor(w) for w in windows]).float().contiguous()


def compile_openvino(network: Any, x: Any, precision: str, threads: int) -> Any:
    """The network converted from torch and compiled for the CPU in ``precision`` (f32 or bf16)."""
    import openvino as ov

    model = ov.convert_model(network, example_input=x)
    config = {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
    }
    return ov.Core().compile_model(model, "CPU", config)


def compare(name: str, repeats: int, threads: int) -> dict[str, Any]:
    """The four variants on one bundle's window batch: times and agreement with torch fp32."""
    import torch

    from medseg.bundle import open_bundle
    from medseg.bundle.loader import load_inference
    from medseg.networks import Autocast, ChannelsLast

    inference = load_inference(open_bundle(REPO / "bundles" / name))
    batch = int(getattr(inference.inferer, "sw_batch_size", 1) or 1)
    x = window_batch(inference, batch)
    network = inference.network.eval()
    start = time.perf_counter()
    compiled = {p: compile_openvino(network, x, p, threads) for p in ("f32", "bf16")}
    compile_s = time.perf_counter() - start
    channels_last = ChannelsLast(network)  # after the conversion, which takes the plain module
    bf16 = Autocast(channels_last)

    def run_torch(model: Any) -> Any:
        with torch.inference_mode():
            return model(x)

    def run_openvino(model: Any) -> Any:
        return torch.from_numpy(model(x.numpy())[0].copy())

    runs = {
        "torch fp32": lambda: run_torch(channels_last),
        "torch bf16": lambda: run_torch(bf16),
        "openvino f32": lambda: run_openvino(compiled["f32"]),
        "openvino bf16": lambda: run_openvino(compiled["bf16"]),
    }
    outputs = {v: run() for v, run in runs.items()}  # warm-up, and the outputs compared
    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for v in VARIANTS:
            t0, c0 = time.perf_counter(), time.process_time()
            runs[v]()
            wall[v].append(time.perf_counter() - t0)
            cpu[v].append(time.process_time() - c0)
    reference = torch.softmax(outputs["torch fp32"].float(), 1)
    row: dict[str, Any] = {
        "bundle": name,
        "input": list(x.shape),
        "cases": f"first {batch} fold-{VAL_FOLD} cases, preprocessed, padded or cropped to the window",
        "openvino_convert_and_compile_s": round(compile_s, 1),
        "variants": {},
    }
    for v in VARIANTS:
        probabilities = torch.softmax(outputs[v].float(), 1)
        row["variants"][v] = {
            "ms": round(statistics.median(wall[v]) * 1000, 1),
            "cpu_ms": round(statistics.median(cpu[v]) * 1000, 1),
            "min_ms": round(min(wall[v]) * 1000, 1),
            "softmax_max_abs_diff": round(float((probabilities - reference).abs().max()), 5),
            "argmax_agreement": round(
                float((probabilities.argmax(1) == reference.argmax(1)).float().mean()), 6
            ),
        }
    ms = {v: row["variants"][v]["ms"] for v in VARIANTS}
    row["speedup_vs_torch_fp32"] = {v: round(ms["torch fp32"] / ms[v], 2) for v in VARIANTS}
    row["openvino_bf16_vs_torch_bf16"] = round(ms["torch bf16"] / ms["openvino bf16"], 2)
    print(f"{name} {row['input']}: {ms}", file=sys.stderr)
    return row


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['threads']} threads for each"
        + (f" (OMP_WAIT_POLICY={m['omp_wait_policy']})" if m.get("omp_wait_policy") else "")
        + "; bf16 units: "
        f"{', '.join(m['bf16_flags']) or 'none'}; torch {m['torch']}, OpenVINO {m['openvino']}; median of "
        f"{results['repeats']} interleaved runs; load average {m['load_average_start']} at the start, "
        f"{m['load_average_end']} at the end.",
        "",
        "| bundle | input | variant | ms (median) | CPU ms | x torch fp32 | softmax max abs diff | argmax agreement |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["bundles"]:
        for v in VARIANTS:
            r = row["variants"][v]
            lines.append(
                f"| {row['bundle']} | {'x'.join(map(str, row['input']))} | {v} | {r['ms']} | {r['cpu_ms']} | "
                f"{row['speedup_vs_torch_fp32'][v]}x | {r['softmax_max_abs_diff']} | {r['argmax_agreement']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch and OpenVINO threads")
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "openvino.json"))
    parser.add_argument("--append", action="store_true", help="add this run to the runs already in --out")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"machine": machine(args.threads), "repeats": args.repeats}
    results["bundles"] = [compare(name, args.repeats, args.threads) for name in args.bundles]
    results["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    results["markdown"] = markdown(results)
    out = Path(args.out)
    runs = json.loads(out.read_text())["runs"] if args.append and out.is_file() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": [*runs, results]}, indent=2) + "\n")
    print(results["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
