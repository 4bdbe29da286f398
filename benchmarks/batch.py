"""Benchmark batch segmentation: studies per minute in one process, on Ray with 1 and 2 workers,
and on a simulated two-node Ray cluster.

The batch: the three hippocampus DICOM series (``dicom/hippocampus-crops``) and the first
``--nifti`` MSD Task04 images, segmented with ``bundles/hippocampus_unet3d`` through
:func:`medseg.segment.run_batch` (what ``medseg segment INPUT... [--workers N]`` runs). Each
configuration runs in its own child process, one after another:

1. ``one process``: no Ray, torch with all logical CPUs as threads (and ``1 thread``: one);
2. ``ray, 1 worker``: a local Ray started in the child (one actor, one CPU, one torch thread);
3. ``ray, 2 workers``: the same with two actors;
4. ``ray cluster, 2 nodes``: ``ray.cluster_utils.Cluster`` with a head that takes no work and two
   worker nodes of one CPU each (separate raylets and object stores on this machine: what
   ``ray start --head`` and ``ray start --address`` give on two machines, without the network).

For each: wall time of the whole child (Python start, Ray start, model loads included), studies
per minute over it, the steady rate between the first and the last finished study (start-up
excluded), and CPU use: the CPU seconds of the child and all its descendants (Ray's processes
included, sampled from /proc), per study and as cores used on average, and the machine's busy
share from ``/proc/stat`` during the run (every process on the machine counts: other load shows).
Every configuration's label maps are compared voxel for voxel with the one-process run.

Usage::

    python benchmarks/batch.py [--nifti 21] [--out benchmarks/results/batch.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medseg.paths import data_dir  # standard library only: no torch import before the timed runs

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"
CONFIGS = {
    "one process": {"workers": None},
    "one process, 1 thread": {"workers": None, "threads": 1},
    "ray, 1 worker": {"workers": 1},
    "ray, 2 workers": {"workers": 2},
    "ray cluster, 2 nodes": {"workers": 2, "cluster_nodes": 2},
}
OBJECT_STORE = 80 * 2**20


def machine() -> dict[str, Any]:
    """CPU model, logical CPUs, versions, and the load before the runs."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
            break
    import importlib.metadata as md

    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": md.version("torch"),
        "ray": md.version("ray"),
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
    }


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class TreeCPU:
    """CPU seconds of a process and all its descendants (Ray's raylets and workers included), from
    /proc, sampled every ``interval`` s: each process counts with the last value seen, so a process
    that lives shorter than ``interval`` is missed (none of the batch's does)."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        import threading

        self.root, self.interval, self.seen = root, interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        parent, cpu = {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = int(fields[11]) + int(fields[12])  # utime + stime
        for pid in cpu:
            node = pid
            while node in parent and node not in (self.root, 0, 1):
                node = parent[node]
            if node == self.root:
                self.seen[pid] = max(self.seen.get(pid, 0), cpu[pid])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return sum(self.seen.values()) / os.sysconf("SC_CLK_TCK")


def inputs(data: Path, nifti: int) -> list[str]:
    crops = data / "dicom" / "hippocampus-crops"
    images = sorted((data / "msd-task04-hippocampus" / "imagesTr").glob("*.nii.gz"))[:nifti]
    return [str(crops / s) for s in ("Study1", "Study2", "Study3")] + [str(p) for p in images]


def child(config: str, paths: list[str], out: str) -> None:
    """One configuration, in this (child) process: prints a JSON line with the record times."""
    from medseg.segment import BatchSettings, discover_inputs, run_batch

    spec = CONFIGS[config]
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    start = time.perf_counter()
    times: list[float] = []
    cluster = None
    address = None
    if spec.get("cluster_nodes"):
        from ray.cluster_utils import Cluster

        head = {"num_cpus": 0, "object_store_memory": OBJECT_STORE, "include_dashboard": False}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        for _ in range(spec["cluster_nodes"]):
            cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        address = cluster.address
    items, _ = discover_inputs(paths)
    settings = BatchSettings(workers=spec["workers"], ray_address=address, progress=False)
    result = run_batch(
        items,
        BUNDLE,
        out,
        settings=settings,
        on_record=lambda record, busy: times.append(time.perf_counter()),
    )
    if cluster is not None:
        import ray

        ray.shutdown()
        cluster.shutdown()
    print(
        json.dumps(
            {
                "done": len(result.results),
                "failed": len(result.failures),
                "failures": result.failures,
                "first_s": round(times[0] - start, 3),
                "last_s": round(times[-1] - start, 3),
            }
        )
    )


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def low_memory_child(low_memory: bool, series: str, bundle: str, labels_out: str) -> None:
    """One large series through ``Segmenter.predict_input``: the inference stage's own peak memory.

    The kernel's peak-RSS counter is reset (``/proc/self/clear_refs``) just before the network runs,
    so the figure is what inference adds on top of what preprocessing left, not the whole run's peak.
    """
    import numpy as np

    from medseg.segment import Segmenter

    segmenter = Segmenter(bundle, low_memory=low_memory, parallel_outputs=False)
    predict, stage = segmenter.predict, {}

    def measured(image: Any) -> Any:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before, start = _status_kb("VmRSS"), time.perf_counter()
        labels = predict(image)
        stage.update(seconds=time.perf_counter() - start, added_mb=(_status_kb("VmHWM") - before) / 1024)
        return labels

    segmenter.predict = measured
    start = time.perf_counter()
    prediction = segmenter.predict_input(series, force=True)
    np.save(labels_out, prediction.labelmap)
    print(
        json.dumps(
            {
                "low_memory": low_memory,
                "network_grid": prediction.net_shape,
                "inference_s": round(stage["seconds"], 1),
                "inference_added_mb": round(stage["added_mb"], 1),
                "whole_s": round(time.perf_counter() - start, 1),
                "peak_rss_mb": round(_status_kb("VmHWM") / 1024, 1),
            }
        )
    )


def run_low_memory(series: Path, bundle: Path, work: Path) -> list[dict[str, Any]]:
    """Normal and ``low_memory`` on one large series, each in its own child; labels compared."""
    rows = []
    for low_memory in (False, True):
        labels = work / f"labels_{low_memory}.npy"
        command = [
            sys.executable,
            __file__,
            "--low-memory-child",
            str(low_memory),
            str(series),
            str(bundle),
            str(labels),
        ]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import numpy as np

    same = np.array_equal(np.load(work / "labels_False.npy"), np.load(work / "labels_True.npy"))
    for row in rows:
        row["labels_equal_normal"] = bool(same)
    return rows


def run_config(config: str, paths: list[str], work: Path) -> dict[str, Any]:
    out = work / config.replace(" ", "_").replace(",", "")
    busy0, total0 = _cpu_ticks()
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", config, "--child-out", str(out), *paths],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tree = TreeCPU(proc.pid)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    tree_cpu_s = tree.stop()
    busy1, total1 = _cpu_ticks()
    if proc.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{stderr[-3000:]}")
    record = json.loads(stdout.strip().splitlines()[-1])
    n = record["done"] + record["failed"]
    steady = (n - 1) / (record["last_s"] - record["first_s"]) * 60 if n > 1 else None
    return {
        "config": config,
        "studies": n,
        "failed": record["failed"],
        "failures": record["failures"],
        "wall_s": round(wall, 2),
        "studies_per_min": round(n / wall * 60, 2),
        "first_study_s": record["first_s"],
        "steady_studies_per_min": round(steady, 2) if steady else None,
        "machine_busy_pct": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
        "cpu_s": round(tree_cpu_s, 1),
        "cpu_s_per_study": round(tree_cpu_s / n, 2),
        "cores_used": round(tree_cpu_s / wall, 2),
        "output": str(out),
    }


def same_label_maps(reference: Path, other: Path) -> bool:
    import nibabel as nib
    import numpy as np

    for path in sorted(reference.rglob("segmentation.nii.gz")):
        a, b = nib.load(path), nib.load(other / path.relative_to(reference))
        if not (
            np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
        ):
            return False
    return True


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, no GPU; torch {m['torch']}, ray {m['ray']}; "
        f"load average before {m['load_average_1_5_15min']}. Batch: {report['studies']} studies "
        f"(3 DICOM series + {report['studies'] - 3} NIfTI), bundle hippocampus_unet3d.",
        "",
        "| configuration | wall (s) | studies/min (whole run) | first study after (s) | studies/min (steady) "
        "| CPU s/study | cores used | machine busy | ratio (steady) | label maps = one process |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = report["runs"][0]["steady_studies_per_min"]
    for run in report["runs"]:
        ratio = run["steady_studies_per_min"] / base if base and run["steady_studies_per_min"] else 0
        lines.append(
            f"| {run['config']} | {run['wall_s']:.1f} | {run['studies_per_min']:.1f} | {run['first_study_s']:.1f} "
            f"| {run['steady_studies_per_min']:.1f} | {run['cpu_s_per_study']:.2f} | {run['cores_used']:.2f} "
            f"| {run['machine_busy_pct']:.0f}% "
            f"| {ratio:.2f} | {'yes' if run['identical'] else 'NO'} |"
        )
    low = report.get("low_memory")
    if low:
        lines += [
            "",
            f"Low-memory mode on {low['series']} with {low['bundle']} (``--force``), inference stage only "
            "(memory it adds above what preprocessing left; peak RSS of the whole process beside it):",
            "",
            "| mode | network grid | inference (s) | inference adds (MB) | peak RSS (MB) | labels = normal |",
            "|---|---|---:|---:|---:|---|",
        ]
        for run in low["runs"]:
            lines.append(
                f"| {'low memory' if run['low_memory'] else 'normal'} | {'x'.join(map(str, run['network_grid']))} "
                f"| {run['inference_s']:.1f} | {run['inference_added_mb']:.0f} | {run['peak_rss_mb']:.0f} "
                f"| {'yes' if run['labels_equal_normal'] else 'NO'} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="the data folder (default: medseg's)")
    parser.add_argument("--nifti", type=int, default=21, help="MSD images added to the 3 DICOM series")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "batch.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--low-memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--low-memory-bundle",
        default=str(REPO / "bundles" / "left_atrium_unet3d"),
        help="bundle for the low-memory comparison on the chest CT (empty: skip it)",
    )
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.paths, args.child_out)
        return 0
    if args.low_memory_child:
        low_memory_child(args.low_memory_child == "True", *args.paths)
        return 0
    paths = inputs(args.data or data_dir(), args.nifti)
    report: dict[str, Any] = {"machine": machine(), "studies": len(paths), "runs": []}
    with tempfile.TemporaryDirectory(prefix="medseg-batch-") as tmp:
        for config in args.configs:
            run = run_config(config, paths, Path(tmp))
            print(
                f"{config}: {run['wall_s']:.1f} s, {run['steady_studies_per_min']} studies/min steady",
                flush=True,
            )
            report["runs"].append(run)
        reference = Path(report["runs"][0]["output"])
        for run in report["runs"]:
            run["identical"] = same_label_maps(reference, Path(run.pop("output")))
        if args.low_memory_bundle:
            ct = (args.data or data_dir()) / "dicom" / "ct-chest"
            report["low_memory"] = {
                "series": "dicom/ct-chest (512x512x139 CT)",
                "bundle": Path(args.low_memory_bundle).name,
                "runs": run_low_memory(ct, Path(args.low_memory_bundle), Path(tmp)),
            }
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
