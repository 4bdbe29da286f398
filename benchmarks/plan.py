"""From labelled folder to test-fold Dice under a wall-clock budget: ``medseg plan`` against a baseline.

For each dataset (MSD hippocampus, the left atrium, a 2-D PNG set of one axial slice per
hippocampus case, and the Kvasir-SEG development photographs) and budget, side by side in one run
on the same CPU, each tool pinned to its own core (``taskset``; its data-augmentation workers too)
with one torch thread:

* **medseg** (core 0): ``medseg plan DATA --target cpu --measure --max-minutes M`` (its step times
  measured on this machine; the nnU-Net rows of ``plan.json`` were planned before ``--measure``
  was passed), ``medseg train --max-minutes M`` (folds 2-4 train, fold 1 monitors),
  then the bundle's own ``inference.json`` on fold 0.
* **naive** (``--baseline naive``, core 1): the fixed recipes of ``benchmarks/naive.py`` that the
  planner must never lose to (issue 21), trained on folds 2-4 for the same budget, data loading
  included, then fold 0 predicted onto each case's own grid. 2-D data: images resized to 256 x 256,
  MONAI UNet 16-256, Dice-CE, AdamW with a cosine decay over the clock, flips, batch 8 (the recipe
  of ``benchmarks/photos.py``). 3-D data: the MONAI spleen-style recipe of ``benchmarks/train.py``
  (UNet 16-256, Novograd, 4 positive/negative crops per image, batch 2; the spleen's 96-voxel
  crop cut to the median training image), sliding-window inference.
* **nnU-Net v2** (``--baseline nnunet``, the default; core 1, in its own venv, ``--nnunet-python``):
  the dataset linked into nnU-Net's raw layout, ``nnUNetv2_plan_and_preprocess`` (its own planner:
  3d_fullres, or 2d for 2-D data), a ``splits_final.json`` whose fold 0 is medseg's split (train
  folds 2-4, validate fold 1), and ``nnUNetv2_train`` with a trainer that is nnU-Net's default
  except for the clock: after the first epoch its poly schedule is fitted to the epochs that fit
  the same budget (its default 1000 epochs of 250 iterations take days on 2 cores, about 13 s per
  iteration), with ``--iterations`` per epoch. Then ``nnUNetv2_predict`` on fold 0 with its
  defaults (mirroring TTA where its plan allows it).

All are scored by the same function (:func:`medseg.evaluation.score_folder`: per-case Dice on each
case's original grid, averaged over cases, then over labels). The budgets count the training
command (medseg: data caching included; naive: its whole process until training ends; nnU-Net: its
``nnUNetv2_train`` process); planning and preprocessing are timed apart, and inference on the test
fold is timed and not budgeted. For medseg the table also sets the step time its plan measured
(at the precision the training ran: a plan that chose bf16 timed both; ``plan_step_fp32`` in the
JSON is the fp32 step its candidates were chosen by) beside the step time its training then showed
(the median interval between the training's iterations in its TensorBoard log): issue 21 asks them
within 25 % of each other.

    # issue 21: every dataset at 8 and 30 minutes against the naive recipes (about 3 hours)
    python benchmarks/plan.py --baseline naive \\
        --datasets hippocampus hippocampus_slices left_atrium kvasir --minutes 8 30
    # against nnU-Net (results in benchmarks/results/plan.json)
    python benchmarks/plan.py --datasets hippocampus --minutes 15 \\
        --nnunet-python ~/.cache/medseg/nnunet-venv/bin/python

Results go to ``benchmarks/results/plan_naive.json`` (``--baseline naive``) or ``plan.json``
(``--baseline nnunet``) unless ``--out`` says otherwise; rows of other datasets and budgets already
there are kept. The nnU-Net venv: ``python -m venv V && V/bin/pip install torch==2.13.0
nnunetv2==2.8.1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medseg import paths  # noqa: E402

# name: (folder under the data folder, the function of tests/support/datasets.py that builds the
# dataset from it in the work folder or None to read it in place, spatial dims)
DATASETS = {
    "hippocampus": ("msd-task04-hippocampus", None, 3),
    "left_atrium": ("la2018-left-atrium", None, 3),
    # 2-D: one axial slice per hippocampus case as a PNG nnU-Net dataset
    "hippocampus_slices": ("msd-task04-hippocampus", "write_hippocampus_slices", 2),
    # 2-D: the 500 Kvasir-SEG development photographs (JPEG) linked into the nnU-Net raw layout
    "kvasir": ("kvasir-seg-dev", "write_kvasir_dev", 2),
}
BASELINES = ("naive", "nnunet")

# nnU-Net's default trainer with a wall-clock budget; written into its package (nnU-Net finds trainer
# classes by name under nnunetv2.training.nnUNetTrainer)
BUDGET_TRAINER = '''
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_MedsegBudget(nnUNetTrainer):
    """nnU-Net's default trainer; the poly schedule is fitted to a wall-clock budget after epoch 1."""

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_s = float(os.environ["MEDSEG_BUDGET_MINUTES"]) * 60
        self.budget_start = float(os.environ["MEDSEG_BUDGET_START"])
        self.num_iterations_per_epoch = int(os.environ.get("MEDSEG_NNUNET_ITERATIONS", "10"))
        self.num_val_iterations_per_epoch = int(os.environ.get("MEDSEG_NNUNET_VAL_ITERATIONS", "2"))
        self.num_epochs = 1000

    def run_training(self):
        self.on_train_start()
        first_epoch_start = None
        while self.current_epoch < self.num_epochs:
            started = time.time()
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
            if first_epoch_start is None:
                first_epoch_start = started
                per_epoch = time.time() - started
                left = self.budget_s - (time.time() - self.budget_start)
                self.num_epochs = max(1, 1 + int(0.97 * left / per_epoch))
                self.lr_scheduler.max_steps = self.num_epochs
                self.print_to_log_file(f"budget: {self.num_epochs} epochs of {per_epoch:.1f} s fit")
            elif time.time() - self.budget_start > self.budget_s:
                break
        self.on_train_end()

    def perform_actual_validation(self, save_probabilities: bool = False):
        pass  # fold 1 is not what is measured; the test fold is predicted separately
'''


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, cpu: int | None = None) -> float:
    """Run a command (pinned to one core), its output to ``log``; return its wall seconds."""
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    start = time.time()
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=True)
    return time.time() - start


def launch(cmd: list[str], log: Path, env: dict[str, str], cpu: int) -> subprocess.Popen:
    """Start a command pinned to one core, its output appended to ``log``."""
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", str(cpu), *cmd]
    out = log.open("a")
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


def one_thread_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **extra})
    return env


# ---------------------------------------------------------------------------------------------- medseg


def medseg_start(
    data: Path, work: Path, minutes: float, dims: int, cpu: int
) -> tuple[subprocess.Popen, dict]:
    medseg = [sys.executable, "-m", "medseg.cli.main"]
    bundle = work / "bundle"
    log = work / "log.txt"
    plan_s = run([*medseg, "plan", str(data), "--output", str(bundle), "--target", "cpu", "--dims", str(dims),
                  "--max-minutes", str(minutes), "--measure", "--force"], log, one_thread_env(), cpu)  # fmt: skip
    start = time.time()
    cmd = [*medseg, "train", str(bundle), "--data", str(data), "--max-minutes", str(minutes), "--no-progress"]
    process = launch(cmd, log, one_thread_env(), cpu)
    return process, {"plan_seconds": round(plan_s, 1), "train_start": start, "bundle": bundle, "log": log}


def training_steps(bundle: Path, log: Path) -> dict[str, Any]:
    """The step time ``medseg train`` showed: the median interval between consecutive iterations in
    its TensorBoard log (``train_loss`` is written at every iteration's end; the median leaves out
    validation and checkpoints at epoch ends), the iterations and the precision from its last line."""
    import re

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found: dict[str, Any] = {"train_step_seconds": None}
    for folder in sorted({p.parent for p in (bundle / "runs" / "train").rglob("events.out.tfevents*")}):
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        if "train_loss" not in events.Tags()["scalars"]:
            continue
        points = sorted((e.step, e.wall_time) for e in events.Scalars("train_loss"))
        gaps = [b[1] - a[1] for a, b in zip(points, points[1:], strict=False) if b[0] == a[0] + 1]
        if gaps:
            found["train_step_seconds"] = round(float(sorted(gaps)[len(gaps) // 2]), 4)
    for line in log.read_text().splitlines():
        match = re.search(r"(\d+) epochs, (\d+) iterations in .*precision (\w+)", line)
        if match:
            found.update(epochs=int(match[1]), iterations=int(match[2]), precision=match[3])
    return found


def _planned_step(plan: dict[str, Any], precision: str | None, fp32_step: float | None) -> float | None:
    """The step time the plan measured at the precision the training ran (a plan that chose bf16 timed
    both; ``fp32_step``, the one the candidates were chosen by, otherwise), plus the data pipeline's
    time per step where the plan measured it."""
    measured = (
        plan.get("training", {}).get("data", {}).get("precision", {}).get(f"seconds_per_step_{precision}")
    )
    step = measured or fp32_step
    data = plan.get("compute", {}).get("value", {}).get("seconds_per_step_data")
    return round(step + data, 4) if step and data else step


def medseg_finish(state: dict, data: Path, work: Path, labels: dict[int, str], cpu: int) -> dict[str, Any]:
    from medseg.evaluation import score_folder

    bundle, log = state["bundle"], state["log"]
    outputs = work / "test_fold"
    infer_s = run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs/inference.json"),
                   "--bundle_root", str(bundle), "--dataset_dir", str(data), "--output_dir", str(outputs)],
                  log, one_thread_env(), cpu)  # fmt: skip
    plan = json.loads((bundle / "plans" / "plan.json").read_text())["values"]
    compute = plan.get("compute", {}).get("value", {})
    steps = training_steps(bundle, log)
    fp32_step = compute.get("seconds_per_step_measured", compute.get("seconds_per_step"))
    planned_step = _planned_step(plan, steps.get("precision"), fp32_step)
    return {
        "plan_seconds": state["plan_seconds"],
        "train_seconds": state["train_seconds"],
        "test_inference_seconds": round(infer_s, 1),
        "network": plan["network"]["value"]["_target_"].rsplit(".", 1)[-1],
        "patch_size": plan["patch_size"]["value"],
        "batch_size": plan["batch_size"]["value"],
        "parameters": plan["network"]["data"].get("parameters"),
        "plan_step_seconds": planned_step,
        "plan_step_fp32": fp32_step,
        "plan_step_data": compute.get("seconds_per_step_data"),
        "plan_step_measured": "seconds_per_step_measured" in compute,
        "plan_step_predicted": compute.get("seconds_per_step_predicted"),
        **steps,
        "train_to_plan_step": round(steps["train_step_seconds"] / planned_step, 3)
        if steps["train_step_seconds"] and planned_step
        else None,
        **_scores(score_folder(outputs, data, 0, labels, suffix="_seg")),
    }


# ----------------------------------------------------------------------------------------------- naive


def naive_start(data: Path, work: Path, minutes: float, dims: int, cpu: int) -> tuple[subprocess.Popen, dict]:
    """Start ``benchmarks/naive.py`` on the dataset; its budget counts from now (its imports included)."""
    log = work / "log.txt"
    start = time.time()
    cmd = [sys.executable, str(REPO / "benchmarks" / "naive.py"), str(data), "--dims", str(dims), "--minutes",
           str(minutes), "--output", str(work), "--start", repr(start)]  # fmt: skip
    return launch(cmd, log, one_thread_env(), cpu), {"train_start": start, "log": log}


def naive_finish(data: Path, work: Path, labels: dict[int, str], dims: int) -> dict[str, Any]:
    """Score the naive recipe's fold-0 predictions; its times are its own (training ends before its
    test-fold inference, in the same process)."""
    from medseg.evaluation import score_folder

    result = json.loads((work / "result.json").read_text())
    suffix = "_seg" if dims == 3 else ""
    return {
        "plan_seconds": None,
        **{k: result[k] for k in ("train_seconds", "test_inference_seconds")},
        "recipe": result["recipe"],
        "network": result["network"],
        "patch_size": result["patch_size"],
        "batch_size": result["batch_size"],
        "parameters": result["parameters"],
        "data_seconds": result["data_seconds"],
        "iterations": result["iterations"],
        "train_step_seconds": result["seconds_per_step"],
        **_scores(score_folder(work / "test_fold", data, 0, labels, suffix=suffix)),
    }


# --------------------------------------------------------------------------------------------- nnU-Net


def _scores(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if k != "per_case"}


def nnunet_env(work: Path, **extra: str) -> dict[str, str]:
    return one_thread_env(
        nnUNet_raw=str(work / "raw"),
        nnUNet_preprocessed=str(work / "preprocessed"),
        nnUNet_results=str(work / "results"),
        nnUNet_n_proc_DA="1",
        nnUNet_compile="false",
        **extra,
    )


def nnunet_raw(data: Path, work: Path, dataset_id: int) -> tuple[str, list[dict[str, Any]]]:
    """Link a dataset into nnU-Net v2's raw layout (one channel); return its name and medseg's datalist."""
    from medseg.data.dataset import load_datalist, open_dataset

    spec = open_dataset(data)
    name = f"Dataset{dataset_id:03d}_{spec.name.replace(' ', '')}"
    root = work / "raw" / name
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    items = load_datalist(data)
    ending = spec.file_ending
    for item in items:
        images = item["image"] if isinstance(item["image"], list) else [item["image"]]
        for channel, image in enumerate(images):
            target = root / "imagesTr" / f"{item['case_id']}_{channel:04d}{ending}"
            if not target.exists():
                target.symlink_to(Path(image).resolve())
        target = root / "labelsTr" / f"{item['case_id']}{ending}"
        if not target.exists():
            target.symlink_to(Path(item["label"]).resolve())
    channels = (
        {str(i): name for i, name in spec.channels.items()} if hasattr(spec, "channels") else {"0": "MRI"}
    )
    meta = {
        "channel_names": channels,
        "labels": {name: value for value, name in sorted(spec.labels.items())},
        "numTraining": len(items),
        "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return name, items


def nnunet_start(python: Path, data: Path, work: Path, minutes: float, dims: int, cpu: int,
                 iterations: int, dataset_id: int) -> tuple[subprocess.Popen, dict]:  # fmt: skip
    from medseg.data import fold_of_cases

    bin_dir = python.parent
    log = work / "log.txt"
    name, items = nnunet_raw(data, work, dataset_id)
    trainer = Path(subprocess.check_output([str(python), "-c", "import nnunetv2.training.nnUNetTrainer as t; print(t.__path__[0])"],
                                           text=True).strip()) / "nnUNetTrainer_MedsegBudget.py"  # fmt: skip
    trainer.write_text(BUDGET_TRAINER)
    config = "3d_fullres" if dims == 3 else "2d"
    plan_s = run([str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", config,
                  "-np", "1", "--verify_dataset_integrity"], log, nnunet_env(work), cpu)  # fmt: skip
    fold_of = fold_of_cases([i["case_id"] for i in items])
    split = [
        {
            "train": sorted(c for c, f in fold_of.items() if f in (2, 3, 4)),
            "val": sorted(c for c, f in fold_of.items() if f == 1),
        }
    ]
    (work / "preprocessed" / name / "splits_final.json").write_text(json.dumps(split, indent=1))
    start = time.time()
    env = nnunet_env(work, MEDSEG_BUDGET_MINUTES=str(minutes), MEDSEG_BUDGET_START=str(start),
                     MEDSEG_NNUNET_ITERATIONS=str(iterations))  # fmt: skip
    cmd = [str(bin_dir / "nnUNetv2_train"), str(dataset_id), config, "0", "-tr", "nnUNetTrainer_MedsegBudget",
           "-device", "cpu"]  # fmt: skip
    process = launch(cmd, log, env, cpu)
    return process, {"plan_seconds": round(plan_s, 1), "train_start": start, "name": name, "items": items,
                     "config": config, "fold_of": fold_of, "log": log}  # fmt: skip


def nnunet_finish(python: Path, state: dict, data: Path, work: Path, labels: dict[int, str], cpu: int,
                  dataset_id: int) -> dict[str, Any]:  # fmt: skip
    from medseg.evaluation import score_folder

    log = state["log"]
    test_in = work / "test_images"
    test_in.mkdir(exist_ok=True)
    raw = work / "raw" / state["name"] / "imagesTr"
    for item in state["items"]:
        if state["fold_of"][item["case_id"]] == 0:
            for path in raw.glob(f"{item['case_id']}_*"):
                target = test_in / path.name
                if not target.exists():
                    target.symlink_to(path.resolve())
    outputs = work / "test_fold"
    infer_s = run([str(python.parent / "nnUNetv2_predict"), "-i", str(test_in), "-o", str(outputs), "-d",
                   str(dataset_id), "-c", state["config"], "-f", "0", "-tr", "nnUNetTrainer_MedsegBudget",
                   "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", "1", "-nps", "1",
                   "--disable_progress_bar"], log, nnunet_env(work), cpu)  # fmt: skip
    plans = json.loads((work / "preprocessed" / state["name"] / "nnUNetPlans.json").read_text())
    conf = plans["configurations"][state["config"]]
    epochs = None
    for line in (work / "results").rglob("training_log_*.txt"):
        for text in line.read_text().splitlines():
            if "budget:" in text:
                epochs = text.split("budget:")[1].strip()
    return {
        "plan_seconds": state["plan_seconds"],
        "train_seconds": state["train_seconds"],
        "test_inference_seconds": round(infer_s, 1),
        "network": conf.get("network_arch_class_name")
        or conf.get("architecture", {}).get("network_class_name"),
        "patch_size": conf["patch_size"],
        "batch_size": conf["batch_size"],
        "schedule": epochs,
        **_scores(score_folder(outputs, data, 0, labels)),
    }


# ------------------------------------------------------------------------------------------------ main


def dataset_folder(dataset: str, workdir: Path) -> Path:
    """The dataset's folder: the data folder's own, or one built in ``workdir`` as the tests build it."""
    folder, builder, _ = DATASETS[dataset]
    if builder is None:
        return paths.data_dir() / folder
    sys.path.insert(0, str(REPO / "tests"))
    from support import datasets

    data = workdir / f"{dataset}_data"
    if data.exists():
        shutil.rmtree(data)
    return getattr(datasets, builder)(paths.data_dir() / folder, data)


def benchmark(dataset: str, minutes: float, args: argparse.Namespace, dataset_id: int) -> dict[str, Any]:
    from medseg.data.dataset import open_dataset

    dims = DATASETS[dataset][2]
    load_before = [round(x, 2) for x in os.getloadavg()]
    work = Path(args.workdir) / f"{dataset}_{minutes:g}min"
    if work.exists():
        shutil.rmtree(work)
    data = dataset_folder(dataset, Path(args.workdir))
    labels = dict(open_dataset(data).labels)
    baseline = args.baseline
    (work / "medseg").mkdir(parents=True)
    (work / baseline).mkdir()
    procs = {}
    if "medseg" in args.tools:
        procs["medseg"] = medseg_start(data, work / "medseg", minutes, dims, cpu=0)
    if "baseline" in args.tools and baseline == "naive":
        procs["naive"] = naive_start(data, work / "naive", minutes, dims, cpu=1)
    elif "baseline" in args.tools:
        procs["nnunet"] = nnunet_start(Path(args.nnunet_python), data, work / "nnunet", minutes, dims, cpu=1,
                                       iterations=args.iterations, dataset_id=dataset_id)  # fmt: skip
    for tool, (process, state) in procs.items():
        code = process.wait()
        state["train_seconds"] = round(time.time() - state["train_start"], 1)
        if code != 0:
            raise SystemExit(f"{tool} failed ({code}); see {state['log']}")
    runs: dict[str, Any] = {}
    if "medseg" in procs:
        runs["medseg"] = medseg_finish(procs["medseg"][1], data, work / "medseg", labels, cpu=0)
    if "naive" in procs:
        runs["naive"] = naive_finish(data, work / "naive", labels, dims)
    if "nnunet" in procs:
        runs["nnunet"] = nnunet_finish(Path(args.nnunet_python), procs["nnunet"][1], data, work / "nnunet", labels,
                                       cpu=1, dataset_id=dataset_id)  # fmt: skip
    return {
        "dataset": dataset,
        "minutes": minutes,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        **runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", default=["hippocampus"], choices=sorted(DATASETS))
    parser.add_argument("--minutes", nargs="+", type=float, default=[15.0])
    parser.add_argument("--baseline", default="nnunet", choices=BASELINES,
                        help="the tool beside medseg: nnU-Net v2 (default) or the naive fixed recipes")  # fmt: skip
    parser.add_argument("--tools", nargs="+", default=["medseg", "baseline"], choices=["medseg", "baseline"],
                        help="run only medseg or only the baseline (default both)")  # fmt: skip
    parser.add_argument("--nnunet-python", default=str(Path.home() / ".cache/medseg/nnunet-venv/bin/python"))
    parser.add_argument(
        "--iterations", type=int, default=10, help="nnU-Net iterations per epoch (default 10)"
    )
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_plan"))
    parser.add_argument("--out", help="results JSON (default benchmarks/results/plan.json, or plan_naive.json "
                        "with --baseline naive)")  # fmt: skip
    args = parser.parse_args()
    name = "plan_naive.json" if args.baseline == "naive" else "plan.json"
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / name
    results = []
    for index, dataset in enumerate(args.datasets):
        for minutes in args.minutes:
            result = benchmark(dataset, minutes, args, dataset_id=900 + index)
            results.append(result)
            print(json.dumps(result, indent=1), flush=True)
    import torch

    payload = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "protocol": f"medseg beside {args.baseline}, side by side, one core and one torch thread each (taskset); "
        "fold 0 tested, folds 2-4 train, fold 1 validates (medseg, nnU-Net)",
        "results": results,
    }
    if out.is_file():  # keep other datasets' and budgets' results
        old = json.loads(out.read_text()).get("results", [])
        keep = [
            r
            for r in old
            if (r["dataset"], r["minutes"]) not in {(x["dataset"], x["minutes"]) for x in results}
        ]
        payload["results"] = keep + results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print_table(payload["results"])
    return 0


def _cell(value: Any, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def print_table(results: list[dict[str, Any]]) -> None:
    """One row per dataset, budget and tool; for medseg its plan's step time beside its training's."""
    print(f"\n{'dataset':<18} {'budget':>6} {'tool':<7} {'plan s':>7} {'train s':>8} {'test s':>7} {'mean Dice':>9} "
          f"{'plan step s':>11} {'train step s':>12} {'iterations':>10}")  # fmt: skip
    for r in results:
        for tool in ("medseg", *BASELINES):
            if tool not in r:
                continue
            t = r[tool]
            print(f"{r['dataset']:<18} {r['minutes']:>6g} {tool:<7} {_cell(t.get('plan_seconds'), 7, 1)} "
                  f"{_cell(t.get('train_seconds'), 8, 1)} {_cell(t.get('test_inference_seconds'), 7, 1)} "
                  f"{_cell(t.get('mean_dice'), 9, 4)} {_cell(t.get('plan_step_seconds'), 11, 3)} "
                  f"{_cell(t.get('train_step_seconds'), 12, 3)} {'-' if t.get('iterations') is None else t['iterations']:>10}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
