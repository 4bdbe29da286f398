"""Benchmark ``medseg segment`` against ``python -m monai.bundle run`` and the bare network forward.

On the 512x512x139 chest CT series (``../shared/data/dicom/ct-chest``), with one set of network
weights and one set of settings for all three:

* a model-zoo style bundle made by this script in a temporary folder: a 3D UNet (channels 16..256,
  strides 2, two residual units, batch norm, 2 output channels; random weights, seed 0, saved once
  into ``models/model.pt``) and a model-zoo ``inference.json`` (LoadImaged, EnsureChannelFirstd,
  Orientationd RAS, Spacingd 1.5x1.5x2.0 mm, ScaleIntensityRanged, SlidingWindowInferer roi 96^3,
  overlap 0.5, sw_batch_size 4, gaussian; Activationsd softmax, Invertd, AsDiscreted argmax,
  SaveImaged);

1. ``python -m monai.bundle run`` on that config (MONAI's reference path);
2. ``medseg segment`` on the same series and bundle (``--force``: the random CT network is not a
   real bundle; it writes the NIfTI, the DICOM SEG, the overlay and the report; ``--no-rtstruct``: the
   random network's speckle mask would make an RT structure set of hundreds of thousands of contours);
3. the floor: the network forward alone over the same windows (as many batches of 4 96^3 windows
   as the sliding window runs on the network grid of (2)), no reading, resampling or writing;
   3b. the same with channels-last tensors, the layout ``medseg segment`` runs CPU networks in
   (its work is also compared with this faster floor);
   3c. the same under bf16 autocast (what ``--precision auto`` runs on a CPU with bf16 units).

``medseg segment`` runs twice per round: with ``--precision auto`` (bf16 where the CPU has AMX or
AVX-512-BF16, see :mod:`medseg.precision`) and with ``--precision fp32``; the two label maps are
compared (Dice of the foreground).

Each runs in its own subprocess; wall time and peak RSS are taken from ``os.wait4`` of that child.
For (2) the report's stage timings give the work after start-up (reading the series to the last
file written). The time to import torch and MONAI is measured separately.

Usage::

    python benchmarks/segment.py [--data ../shared/data] [--out benchmarks/results/segment.json]
        [--markdown benchmarks/RESULTS_segment.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medseg.paths import data_dir  # standard library only: no torch import before the timed runs
from medseg.precision import (  # no torch either
    BF16_FLAGS,
    bf16_units,
    cpu_flags,
    cpu_model,
    resolve_precision,
)

REPO = Path(__file__).resolve().parents[1]
PIXDIM = [1.5, 1.5, 2.0]
ROI = [96, 96, 96]
OVERLAP = 0.5
SW_BATCH = 4
CHANNELS = [16, 32, 64, 128, 256]

INFERENCE = {
    "imports": ["$import glob", "$import os", "$import torch"],
    "bundle_root": ".",
    "input_path": "",
    "output_dir": "$@bundle_root + '/eval'",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 2,
        "channels": CHANNELS,
        "strides": [2, 2, 2, 2],
        "num_res_units": 2,
        "norm": "batch",
    },
    "network": "$@network_def.to(@device)",
    "preprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": PIXDIM, "mode": "bilinear"},
            {
                "_target_": "ScaleIntensityRanged",
                "keys": "image",
                "a_min": -57,
                "a_max": 164,
                "b_min": 0,
                "b_max": 1,
                "clip": True,
            },
            {"_target_": "EnsureTyped", "keys": "image"},
        ],
    },
    "dataset": {"_target_": "Dataset", "data": [{"image": "@input_path"}], "transform": "@preprocessing"},
    "dataloader": {
        "_target_": "DataLoader",
        "dataset": "@dataset",
        "batch_size": 1,
        "shuffle": False,
        "num_workers": 0,
    },
    "inferer": {
        "_target_": "SlidingWindowInferer",
        "roi_size": ROI,
        "sw_batch_size": SW_BATCH,
        "overlap": OVERLAP,
        "mode": "gaussian",
    },
    "postprocessing": {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {
                "_target_": "Invertd",
                "keys": "pred",
                "transform": "@preprocessing",
                "orig_keys": "image",
                "meta_key_postfix": "meta_dict",
                "nearest_interp": False,
                "to_tensor": True,
            },
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {
                "_target_": "SaveImaged",
                "keys": "pred",
                "output_dir": "@output_dir",
                "output_postfix": "seg",
                "output_dtype": "$torch.uint8",
                "separate_folder": False,
                "resample": False,
            },
        ],
    },
    "handlers": [
        {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
            "map_location": "@device",
        }
    ],
    "evaluator": {
        "_target_": "SupervisedEvaluator",
        "device": "@device",
        "val_data_loader": "@dataloader",
        "network": "@network",
        "inferer": "@inferer",
        "postprocessing": "@postprocessing",
        "val_handlers": "@handlers",
        "amp": False,
    },
    "initialize": ["$monai.utils.set_determinism(seed=0)"],
    "run": ["$@evaluator.run()"],
}

METADATA = {
    "version": "0.0.1",
    "name": "benchmark CT UNet (random weights)",
    "task": "benchmark only: random weights, no meaningful output",
    "network_data_format": {
        "inputs": {
            "image": {"type": "image", "modality": "CT", "num_channels": 1, "spatial_shape": [96, 96, 96]}
        },
        "outputs": {
            "pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}
        },
    },
}


def machine() -> dict:
    """CPU model, logical CPUs, versions, and how busy the machine was."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    flags = cpu_flags()
    return {
        "cpu": model,
        "cpu_model": cpu_model(),
        "bf16_flags": bf16_units(flags),
        "amx": sorted(f for f in flags if f.startswith("amx")),
        "auto_precision": resolve_precision("auto", "cpu").dtype,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
    }


def make_bundle(root: Path) -> None:
    """The temporary zoo-style bundle with random weights (seed 0)."""
    import torch
    from monai.networks.nets import UNet

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(INFERENCE, indent=2))
    (root / "configs" / "metadata.json").write_text(json.dumps(METADATA, indent=2))
    torch.manual_seed(0)
    net = UNet(3, 1, 2, channels=CHANNELS, strides=[2, 2, 2, 2], num_res_units=2, norm="batch")
    torch.save(net.state_dict(), root / "models" / "model.pt")


def measure(command: list[str], cwd: Path | None = None) -> dict:
    """Run one command as a child; wall time and that child's peak RSS (os.wait4)."""
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = child.stdout.read() if child.stdout else b""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    child.returncode = code
    result = {
        "command": " ".join(command),
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "exit_code": code,
    }
    text = output.decode(errors="replace")
    if code != 0:
        result["output_tail"] = text[-3000:]
    result["_output"] = text
    return result


def floor(bundle: Path, grid: list[int], channels_last: bool = False, bf16: bool = False) -> None:
    """(3) in a child: the network forward over the windows a sliding window needs on ``grid``."""
    import torch
    from monai.bundle import ConfigParser
    from monai.data.utils import dense_patch_slices

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    net.eval()
    size = [max(g, r) for g, r in zip(grid, ROI, strict=True)]  # the inferer pads up to the roi
    scan = [int(r * (1 - OVERLAP)) for r in ROI]
    windows = len(dense_patch_slices(size, ROI, scan))
    torch.manual_seed(0)
    batch = torch.rand(SW_BATCH, 1, *ROI)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        batch = batch.contiguous(memory_format=torch.channels_last_3d)
    if bf16:
        from medseg.networks import Autocast

        net = Autocast(net, "bf16")
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, windows, SW_BATCH):
            n = min(SW_BATCH, windows - first)
            net(batch[:n])
    print(json.dumps({"windows": windows, "forward_s": round(time.perf_counter() - start, 3)}))


def _foreground_dice(a: Path, b: Path) -> float:
    """Dice of the foreground of two label maps (NIfTI)."""
    import nibabel as nib
    import numpy as np

    x, y = (np.asarray(nib.load(str(p)).dataobj) > 0 for p in (a, b))
    total = int(x.sum() + y.sum())
    return round(2 * int(np.logical_and(x, y).sum()) / total, 5) if total else 1.0


def _cpu_counters() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat (user nice system idle iowait irq softirq steal ...)."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _spread(values: list[float]) -> str:
    return (
        f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"
        if len(values) > 1
        else f"{values[0]:.1f}"
    )


def markdown(results: dict) -> str:
    rounds = results["rounds"]
    zoo = [r["monai_bundle_run"]["wall_s"] for r in rounds]
    ours = [r["medseg_segment"]["wall_s"] for r in rounds]
    work = [r["medseg_work_s"] for r in rounds]
    bare = [r["network_floor"]["forward_s"] for r in rounds]
    bare_cl = [r["network_floor_channels_last"]["forward_s"] for r in rounds]
    bare_bf16 = [r["network_floor_channels_last_bf16"]["forward_s"] for r in rounds]
    ours_fp32 = [r["medseg_segment_fp32"]["wall_s"] for r in rounds]
    imports = [r["import"]["wall_s"] for r in rounds]

    def cpu(name: str) -> str:
        return f"{_median([r[name]['cpu_s'] for r in rounds]):.1f}"

    def rss(name: str) -> str:
        return f"{max(r[name]['peak_rss_mb'] for r in rounds):.0f}"

    m = results["machine"]
    ratios = results["ratios"]
    lines = [
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, no GPU. CPU time stolen by the hypervisor or "
        f"used by other processes during the run: {results['cpu_other_percent']}% of the machine; load average at "
        f"the end {m['load_average_1_5_15min']}. bf16 units: {', '.join(m.get('bf16_flags', [])) or 'none'} "
        f"(of {', '.join(BF16_FLAGS)}); AMX: {', '.join(m.get('amx', [])) or 'none'}; `--precision auto` "
        f"runs {m.get('auto_precision', 'fp32')}.",
        "",
        f"Input: `{results['input']}`; network grid {results['network_grid']} at {PIXDIM} mm, "
        f"{results['windows']} windows of {ROI[0]}^3, overlap {OVERLAP}, sw_batch_size {SW_BATCH}, gaussian blending; "
        f"{len(rounds)} rounds, interleaved; wall times are median (min-max), peak RSS the largest.",
        "",
        "| run | wall (s) | CPU (s) | peak RSS (MB) | ratio |",
        "|---|---:|---:|---:|---:|",
        f"| 1. `python -m monai.bundle run` (zoo inference.json) | {_spread(zoo)} | {cpu('monai_bundle_run')} | "
        f"{rss('monai_bundle_run')} | 1.00 |",
        f"| 2. `medseg segment` (whole command: NIfTI + SEG + overlay + report; `--precision auto`: "
        f"{rounds[0].get('medseg_precision', 'fp32')}) | {_spread(ours)} | "
        f"{cpu('medseg_segment')} | {rss('medseg_segment')} | {ratios['medseg_vs_monai_wall']:.2f} of (1) |",
        f"| 2b. the same with `--precision fp32` (label maps agree to Dice "
        f"{ratios['auto_vs_fp32_dice_min']:.4f}) | {_spread(ours_fp32)} | {cpu('medseg_segment_fp32')} | "
        f"{rss('medseg_segment_fp32')} | {ratios['medseg_fp32_vs_monai_wall']:.2f} of (1); (2) is "
        f"{ratios['medseg_auto_vs_fp32_wall']:.2f} of it |",
        f"| 2a. `medseg segment` work after start-up (reading the series .. last file written) | {_spread(work)} | | | "
        f"{ratios['medseg_work_vs_floor']:.2f} of (3), {ratios['medseg_work_vs_channels_last_floor']:.2f} of (3b) |",
        f"| 3. network forward only over the same windows (floor) | {_spread(bare)} | {cpu('network_floor')} | "
        f"{rss('network_floor')} | |",
        f"| 3b. the same, channels-last layout (how medseg runs it on CPU) | {_spread(bare_cl)} | "
        f"{cpu('network_floor_channels_last')} | {rss('network_floor_channels_last')} | |",
        f"| 3c. the same under bf16 autocast | {_spread(bare_bf16)} | "
        f"{cpu('network_floor_channels_last_bf16')} | {rss('network_floor_channels_last_bf16')} | |",
        f"| `import torch, monai` | {_spread(imports)} | | | |",
        "",
        "medseg stage timings of the median round (s): "
        + ", ".join(f"{k} {v:.2f}" for k, v in results["medseg_timings_s"].items()),
    ]
    return "\n".join(lines) + "\n"


def one_round(python: str, bundle: Path, ct: Path, work: Path, grid: list[int] | None) -> dict:
    """(import), (1), (2), (3) once each, in that order."""
    result: dict = {"import": measure([python, "-c", "import torch, monai"])}
    print("  1. python -m monai.bundle run", file=sys.stderr)
    result["monai_bundle_run"] = measure(
        [
            python, "-m", "monai.bundle", "run",
            "--config_file", str(bundle / "configs" / "inference.json"),
            "--bundle_root", str(bundle),
            "--input_path", str(ct),
            "--output_dir", str(work / "out_monai"),
        ]
    )  # fmt: skip
    print("  2. medseg segment", file=sys.stderr)
    out = work / "out_medseg"
    result["medseg_segment"] = measure(
        [
            python, "-m", "medseg.cli.main", "segment", str(ct),
            "--bundle", str(bundle), "--output", str(out),
            "--overlap", str(OVERLAP), "--force", "--no-progress", "--no-rtstruct",
        ],
        cwd=REPO,
    )  # fmt: skip
    print("  2b. medseg segment --precision fp32", file=sys.stderr)
    out_fp32 = work / "out_medseg_fp32"
    result["medseg_segment_fp32"] = measure(
        [
            python, "-m", "medseg.cli.main", "segment", str(ct),
            "--bundle", str(bundle), "--output", str(out_fp32),
            "--overlap", str(OVERLAP), "--force", "--no-progress", "--no-rtstruct", "--precision", "fp32",
        ],
        cwd=REPO,
    )  # fmt: skip
    for name in ("monai_bundle_run", "medseg_segment", "medseg_segment_fp32"):
        if result[name]["exit_code"] != 0:
            raise RuntimeError(f"{name} failed:\n{result[name].get('output_tail', '')}")
    report = json.loads((out / "report.json").read_text())
    result["medseg_precision"] = report["settings"]["precision"]["dtype"]
    result["medseg_fp32_work_s"] = json.loads((out_fp32 / "report.json").read_text())["timings_s"]["total"]
    result["auto_vs_fp32_dice"] = _foreground_dice(out / "segmentation.nii.gz", out_fp32 / "segmentation.nii.gz")
    result["network_grid"] = report["settings"]["network_grid_shape"]
    result["medseg_timings_s"] = report["timings_s"]
    result["medseg_peak_rss_mb_after"] = report.get("peak_rss_mb_after")
    # work after start-up: reading the series .. the last output written (the report's own write is ~1 ms)
    result["medseg_work_s"] = report["timings_s"]["total"]
    result["medseg_outputs_mb"] = {p.name: round(p.stat().st_size / 1e6, 2) for p in sorted(out.iterdir())}
    print("  3. network forward only", file=sys.stderr)
    for key, layout in (
        ("network_floor", []),
        ("network_floor_channels_last", ["--channels-last"]),
        ("network_floor_channels_last_bf16", ["--channels-last", "--bf16"]),
    ):
        bare = measure(
            [
                python,
                str(Path(__file__).resolve()),
                "--floor",
                str(bundle),
                *map(str, grid or result["network_grid"]),
                *layout,
            ]
        )
        if bare["exit_code"] != 0:
            raise RuntimeError(f"the floor run failed:\n{bare.get('output_tail', '')}")
        result[key] = {**bare, **json.loads(bare["_output"].strip().splitlines()[-1])}
    for value in result.values():
        if isinstance(value, dict):
            value.pop("_output", None)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(data_dir()))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "segment.json"))
    parser.add_argument("--markdown", default=str(REPO / "benchmarks" / "RESULTS_segment.md"))
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds of (1), (2), (3), interleaved (default 3)"
    )
    parser.add_argument(
        "--note", default="", help="a remark for the results (e.g. other work on the machine)"
    )
    parser.add_argument("--floor", nargs=4, metavar=("BUNDLE", "X", "Y", "Z"), help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        floor(Path(args.floor[0]), [int(v) for v in args.floor[1:]], args.channels_last, args.bf16)
        return 0

    ct = Path(args.data) / "dicom" / "ct-chest"
    if not ct.is_dir():
        print(f"the CT series {ct} is missing; set --data or MEDSEG_DATA_DIR", file=sys.stderr)
        return 2
    python = sys.executable
    results: dict = {
        "machine": machine(),
        "input": "dicom/ct-chest in the data folder (512x512x139 CT)",
        "note": args.note,
    }
    before, children_before = _cpu_counters(), os.times()
    tmp_used = ""
    with tempfile.TemporaryDirectory(prefix="medseg-bench-") as tmp:
        tmp_used = tmp
        work = Path(tmp)
        bundle = work / "bundle"
        make_bundle(bundle)
        rounds = []
        grid = None
        for index in range(args.repeats):
            print(f"round {index + 1} of {args.repeats}", file=sys.stderr)
            try:
                rounds.append(one_round(python, bundle, ct, work / f"round{index}", grid))
            except RuntimeError as exc:
                print(exc, file=sys.stderr)
                return 1
            grid = rounds[-1]["network_grid"]
    after, children_after = _cpu_counters(), os.times()
    if before and after:
        delta = [a - b for a, b in zip(after, before, strict=False)]
        total_s = sum(delta[:8]) / os.sysconf("SC_CLK_TCK")
        busy_s = sum(delta[i] for i in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")  # incl. steal
        ours_s = (children_after.children_user - children_before.children_user) + (
            children_after.children_system - children_before.children_system
        )
        results["cpu_other_percent"] = (
            round(max(0.0, busy_s - ours_s) / total_s * 100, 1) if total_s else None
        )
        results["cpu_steal_percent"] = (
            round(delta[7] / max(sum(delta[:8]), 1) * 100, 1) if len(delta) > 7 else None
        )
    else:
        results["cpu_other_percent"] = results["cpu_steal_percent"] = None
    results["machine"]["load_average_1_5_15min"] = [round(v, 2) for v in os.getloadavg()]
    results["rounds"] = rounds
    results["network_grid"] = rounds[0]["network_grid"]
    results["windows"] = rounds[0]["network_floor"]["windows"]
    order = sorted(range(len(rounds)), key=lambda i: rounds[i]["medseg_work_s"])
    results["medseg_timings_s"] = rounds[order[len(order) // 2]]["medseg_timings_s"]
    zoo = _median([r["monai_bundle_run"]["wall_s"] for r in rounds])
    ours = _median([r["medseg_segment"]["wall_s"] for r in rounds])
    ours_fp32 = _median([r["medseg_segment_fp32"]["wall_s"] for r in rounds])
    work_s = _median([r["medseg_work_s"] for r in rounds])
    floor_s = _median([r["network_floor"]["forward_s"] for r in rounds])
    floor_cl_s = _median([r["network_floor_channels_last"]["forward_s"] for r in rounds])
    results["medians_s"] = {
        "monai_bundle_run": zoo,
        "medseg_segment": ours,
        "medseg_work": work_s,
        "network_floor": floor_s,
        "network_floor_channels_last": floor_cl_s,
    }
    results["ratios"] = {
        "medseg_vs_monai_wall": round(ours / zoo, 3),
        "medseg_fp32_vs_monai_wall": round(ours_fp32 / zoo, 3),
        "medseg_auto_vs_fp32_wall": round(ours / ours_fp32, 3),
        "auto_vs_fp32_dice_min": min(r["auto_vs_fp32_dice"] for r in rounds),
        "medseg_work_vs_floor": round(work_s / floor_s, 3),
        "medseg_work_vs_channels_last_floor": round(work_s / floor_cl_s, 3),
        "medseg_peak_rss_mb": max(r["medseg_segment"]["peak_rss_mb"] for r in rounds),
        "monai_peak_rss_mb": max(r["monai_bundle_run"]["peak_rss_mb"] for r in rounds),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # machine-independent commands in the JSON: no home, checkout or temporary folder names
    text = json.dumps(results, indent=2)
    for path, name in (
        (tmp_used, "$TMPDIR/medseg-bench"),
        (str(Path(args.data).resolve()), "$DATA"),
        (str(REPO) + "/", ""),
    ):
        text = text.replace(path, name) if path else text
    Path(args.out).write_text(text + "\n")
    table = markdown(results)
    print(table)
    header = (
        "# medseg segment benchmark\n\n"
        "Made by `python benchmarks/segment.py` (see its docstring for what is compared); raw numbers in "
        "`benchmarks/results/segment.json`.\n\n"
    )
    note = f"\n**Note:** {args.note}\n" if args.note else ""
    Path(args.markdown).write_text(header + table + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
