"""Benchmark the medseg networks: parameters, forward time and peak memory, 2D and 3D.

Every network with its default options (``in_channels=1``, ``out_channels=3``) runs in a
fresh subprocess, so that the peak resident memory (``ru_maxrss``) of one network is not
hidden by another's. Per network and device:

- CPU: median forward time (``torch.no_grad``, after warm-up) on a 1x1x96x96x96 (3D) or
  1x1x256x256 (2D) input, and the peak RSS increase during the forwards over the RSS
  after the model and input were created (activations and workspace);
- GPU (when CUDA is available): the same with ``torch.autocast`` (float16), timed with
  CUDA synchronisation, and ``torch.cuda.max_memory_allocated`` over the forwards.

Usage::

    python benchmarks/networks.py [--repeats 5] [--out benchmarks/results/networks.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = {2: (256, 256), 3: (96, 96, 96)}
OUT_CHANNELS = 3


def machine() -> dict:
    """CPU model, logical CPUs, torch threads, versions, GPU if any."""
    import torch

    model, family = "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            if key.strip() == "cpu family" and not family:
                family = value.strip()
    except OSError:
        model = platform.processor() or "unknown"
    info = {
        "cpu": f"{model} (family {family})" if family else model,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # other work on the machine slows the CPU timings: report how busy it was
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
    }
    import monai

    info["monai"] = monai.__version__
    return info


def _rss_kib() -> int:
    """Current resident set size in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker(name: str, dims: int, device: str, repeats: int, warmup: int) -> dict:
    """Measure one network on one device; runs in its own process."""
    import torch

    from medseg import networks

    torch.manual_seed(0)
    net = networks.create(name, spatial_dims=dims, in_channels=1, out_channels=OUT_CHANNELS).eval().to(device)
    x = torch.randn(1, 1, *SIZES[dims], device=device)
    result = {
        "network": name,
        "spatial_dims": dims,
        "device": device,
        "input": [1, 1, *SIZES[dims]],
        "parameters": networks.count_parameters(net),
        "threads": torch.get_num_threads(),
    }
    times = []
    if device == "cpu":
        rss_before = _rss_kib()
        with torch.no_grad():
            for i in range(warmup + repeats):
                start = time.perf_counter()
                y = net(x)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
        # ru_maxrss is in KiB on Linux; it is the process peak, the model and input included
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result["peak_memory_mib"] = max(0, peak - rss_before) / 1024
    else:
        torch.backends.cudnn.benchmark = True
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
            for _ in range(warmup):
                y = net(x)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            for _ in range(repeats):
                torch.cuda.synchronize()
                start = time.perf_counter()
                y = net(x)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        result["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["amp"] = "float16"
    assert tuple(y.shape) == (1, OUT_CHANNELS, *SIZES[dims])
    result["forward_ms_median"] = 1000 * statistics.median(times)
    result["forward_ms_min"] = 1000 * min(times)  # least disturbed by other work on the machine
    result["forward_ms_all"] = [1000 * t for t in times]
    return result


def run_all(repeats: int, warmup: int, names: list[str] | None) -> dict:
    import torch

    from medseg import networks

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    load_before = [round(v, 2) for v in os.getloadavg()]
    results = []
    for device in devices:
        for dims in (2, 3):
            for name in names or networks.available():
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    name,
                    str(dims),
                    device,
                    "--repeats",
                    str(repeats),
                    "--warmup",
                    str(warmup),
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"{name} {dims}D on {device} failed:\n{done.stderr}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"  {name} {dims}D {device}: {result['forward_ms_median']:.1f} ms", file=sys.stderr)
                results.append(result)
    info = machine()
    info["load_average_before"] = load_before
    return {"machine": info, "repeats": repeats, "warmup": warmup, "results": results}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with "
        f"{m['torch_threads']} threads, MONAI {m['monai']}; GPU: {m['gpu'] or 'none'}. "
        f"Default options, in_channels=1, out_channels={OUT_CHANNELS}; median of {report['repeats']} "
        f"forwards after {report['warmup']} warm-up, batch 1, `torch.no_grad`. Load average "
        f"(1 min) {m['load_average_before'][0]} before and {m['load_average_1_5_15min'][0]} after the run.",
        "",
        "| network | dims | input | parameters | size (MiB, fp32) | device | forward ms (median) | forward ms (min) "
        "| peak memory (MiB) |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in report["results"]:
        device = "CPU" if r["device"] == "cpu" else f"GPU ({r.get('amp', 'fp32')} autocast)"
        memory = "peak RSS increase" if r["device"] == "cpu" else "max allocated"
        lines.append(
            f"| {r['network']} | {r['spatial_dims']}D | {'x'.join(map(str, r['input'][2:]))} | "
            f"{r['parameters']:,} | {r['parameters'] * 4 / 2**20:.1f} | {device} | "
            f"{r['forward_ms_median']:.1f} | {r['forward_ms_min']:.1f} | {r['peak_memory_mib']:.0f} ({memory}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per network")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards before timing")
    parser.add_argument("--networks", nargs="*", help="subset of networks (default: all)")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/networks.json"), help="JSON output"
    )
    parser.add_argument("--worker", nargs=3, metavar=("NAME", "DIMS", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        name, dims, device = args.worker
        print(json.dumps(worker(name, int(dims), device, args.repeats, args.warmup)))
        return
    report = run_all(args.repeats, args.warmup, args.networks)
    table = markdown(report)
    report["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
