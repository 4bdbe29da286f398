"""``medseg plan DATASET --output BUNDLE``: fingerprint a labelled dataset, plan a bundle and render it.

The dataset (MSD or nnU-Net v2 raw layout) is read once, in parallel, which validates every case;
only then are ``BUNDLE/plans/fingerprint.json``, ``BUNDLE/plans/plan.json`` and the bundle's files
(``configs/``, ``docs/README.md``, ``LICENSE``; see :mod:`medseg.render`) written, each
atomically, so a bad dataset leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["MEASURE_ENV", "add_parser", "run"]

# "0" plans CPU bundles from the FLOP model alone, as --no-measure does (the test suite sets it, so that
# its plans are the same on every machine).
MEASURE_ENV = "MEDSEG_PLAN_MEASURE"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from medseg.plan.planner import DEFAULT_CPU_MINUTES, NETWORK_NAMES, REFERENCE_GPU_MEMORY_GB, TARGETS

    parser = subparsers.add_parser(
        "plan",
        help="plan a bundle for a labelled dataset (nnU-Net-style rules, CPU or GPU budget)",
        description="Fingerprint a labelled dataset (MSD dataset.json with imagesTr/labelsTr, or an nnU-Net v2 "
        "raw dataset, NIfTI or PNG) and plan a bundle for it from rules: spacing, normalisation, patch, "
        "network depth and width, batch, loss, augmentation, sliding window, suitability limits. Writes "
        "BUNDLE/plans/fingerprint.json and BUNDLE/plans/plan.json, and renders the bundle (configs/, "
        "docs/README.md, LICENSE) from medseg's bundle template.",
    )
    parser.add_argument("dataset", help="dataset folder holding dataset.json")
    parser.add_argument("--output", "-o", required=True, help="bundle folder (plans/ is written inside)")
    parser.add_argument(
        "--network",
        default=None,
        choices=NETWORK_NAMES,
        help="network (default: unet for a CPU plan, resencunet for a GPU plan: nnU-Net's residual-encoder "
        "U-Net with the ResEnc preset of --gpu-memory-gb)",
    )
    parser.add_argument("--dims", type=int, choices=(3, 2), default=None, help="3 or 2 (default: the data's)")
    parser.add_argument("--name", help="bundle name (default: from the dataset's name and the network)")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default=None,
        help="plan for CPU time or GPU memory (default: cpu when no CUDA device is present, or gpu with "
        "--gpu-memory-gb)",
    )
    parser.add_argument("--gpu", action="store_true", help="plan for GPU memory (the same as --target gpu)")
    parser.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help=f"GPU plans: the GPU's memory (default {REFERENCE_GPU_MEMORY_GB:g}, nnU-Net's reference); it also "
        "picks nnU-Net's ResEnc preset: below 16 GB M, below 32 GB L, else XL (e.g. 8, 24, 40)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=DEFAULT_CPU_MINUTES,
        help=f"CPU plans: wall-clock budget of the training (default {DEFAULT_CPU_MINUTES:g})",
    )
    parser.add_argument(
        "--concepts",
        help="JSON file of DICOM SEG codes per label value, in the format of metadata.json's segment_codes "
        "(default: dataset.json's 'concepts' block, else a look-up by label name when segmenting)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="processes reading the data (default: cores)"
    )
    parser.add_argument(
        "--explain", action="store_true", help="print each planned value with its rule and data"
    )
    parser.add_argument(
        "--interactive",
        action="store_true",
        help="a click-guided (DeepEdit-style) bundle: the image plus one guidance channel per label and "
        "background, trained with simulated clicks; without clicks it segments on its own",
    )
    parser.add_argument(
        "--measure",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CPU plans (default: on): time a few real training steps of the candidates on this machine (cached "
        "per machine, torch version, threads and candidate) instead of trusting the FLOP model alone; the plan "
        f"and --explain show measured and predicted seconds per step. --no-measure (or {MEASURE_ENV}=0) plans "
        "from the FLOP model alone: the same plan on every machine",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing plan")
    parser.set_defaults(func=run)


def _measures(args: argparse.Namespace, target: str) -> bool:
    """Whether the plan times real training steps: CPU plans do unless told not to (``--no-measure`` or
    ``MEDSEG_PLAN_MEASURE=0``); a GPU plan is sized by memory and times nothing (``--measure`` is refused there)."""
    if args.measure is not None:
        return bool(args.measure)
    return target == "cpu" and os.environ.get(MEASURE_ENV, "1").strip().lower() not in (
        "0",
        "false",
        "no",
        "off",
    )


def _read_json_object(path: Path, what: str) -> dict:
    """A JSON object from a user's file; :class:`ConfigError` naming the file otherwise."""
    import json

    from medseg.errors import ConfigError

    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); fix it") from exc
    if not isinstance(payload, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return payload


def _read_overrides(path: Path) -> dict:
    """``plans/overrides.json``: deliberate choices that differ from the rules (``{}`` when absent)."""
    return _read_json_object(path, "overrides") if path.is_file() else {}


def _default_target() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _target(args: argparse.Namespace) -> str:
    """The budget's kind: --target, --gpu or --gpu-memory-gb (a GPU plan), else what this machine has."""
    from medseg.errors import ConfigError

    gpu = args.gpu or args.gpu_memory_gb is not None
    if args.target is not None and args.target != "gpu" and gpu:
        option = "--gpu" if args.gpu else "--gpu-memory-gb"
        raise ConfigError(f"{option} plans for a GPU but --target is {args.target}; drop one of them")
    if args.target is not None:
        return str(args.target)
    return "gpu" if gpu else _default_target()


def run(args: argparse.Namespace) -> int:
    from medseg.data.dataset import open_dataset
    from medseg.errors import ConfigError
    from medseg.io.atomic import atomic_write_json
    from medseg.plan.cost import StepTimer
    from medseg.plan.fingerprint import extract_fingerprint
    from medseg.plan.planner import REFERENCE_GPU_MEMORY_GB, explain, make_plan
    from medseg.render import BUNDLE_FILES, render_bundle
    from medseg.render.interactive import planned_template
    from medseg.render.records import (
        CV_RECORD,
        FINGERPRINT_FILE,
        OVERRIDES_FILE,
        PLAN_FILE,
        RECORD_FILE,
        Plan,
    )

    root = Path(args.output)
    targets = [root / f for f in (FINGERPRINT_FILE, PLAN_FILE, *BUNDLE_FILES)]
    existing = [path for path in targets if path.exists()]
    if existing and not args.force:
        raise ConfigError(f"{existing[0]} exists; add --force to replace the plan and the bundle's files")
    if args.workers is not None and args.workers < 1:
        raise ConfigError("--workers must be at least 1")
    target = _target(args)
    overrides = _read_overrides(root / OVERRIDES_FILE)
    concepts = _read_json_object(Path(args.concepts), "--concepts") if args.concepts else None
    spec = open_dataset(args.dataset)
    fingerprint = extract_fingerprint(spec, workers=args.workers, progress=sys.stderr.isatty())
    plan = make_plan(
        fingerprint,
        network=args.network,
        dims=args.dims,
        target=target,
        name=args.name,
        max_minutes=args.max_minutes,
        gpu_memory_gb=REFERENCE_GPU_MEMORY_GB if args.gpu_memory_gb is None else args.gpu_memory_gb,
        dataset_folder=spec.root.name,
        overrides=overrides,
        concepts=concepts,
        timer=StepTimer() if _measures(args, target) else None,
    )
    if args.interactive:  # the template's choice, recorded so that re-rendering picks it again
        plan["inputs"]["interactive"] = True
    try:
        planned_template(plan)(plan).files()  # rendered before anything is written
        not_rendered = ""
    except ConfigError as exc:  # a plan the template cannot render yet: the plan is still written
        not_rendered = str(exc)
    (root / PLAN_FILE).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / FINGERPRINT_FILE, fingerprint)
    atomic_write_json(root / PLAN_FILE, plan)
    for stale in (RECORD_FILE, CV_RECORD):  # they describe runs of the replaced plan
        if (root / stale).is_file():
            (root / stale).unlink()
            print(f"removed {stale}: it recorded a run of the replaced plan; record the new run's")
    if not not_rendered:
        render_bundle(plan, args.output)
    if args.explain:
        print(explain(plan))
    planned, inputs = Plan.of(plan), plan["inputs"]
    print(
        f"{inputs['name']}: {len(spec.cases)} cases, {inputs['network']} {inputs['dims']}-D for "
        f"{inputs['target']}, spacing {planned['target_spacing']}, patch {planned['patch_size']}, "
        f"batch {planned['batch_size']}, {planned['training']['max_epochs']} epochs"
    )
    compute = planned["compute"]
    if "memory_budget_gib" in compute:
        preset = f", nnU-Net ResEnc preset {compute['preset']}" if "preset" in compute else ""
        print(
            f"GPU memory: {compute['memory_gib_at_batch']} GiB estimated at the planned batch, budget "
            f"{compute['memory_budget_gib']} GiB{preset}"
        )
    if "seconds_per_step_measured" in compute:
        print(
            f"step time: {compute['seconds_per_step_measured']} s measured on this machine, "
            f"{compute['seconds_per_step_predicted']} s predicted by the FLOP model"
            + (
                f", plus {compute['seconds_per_step_data']} s of data pipeline per step"
                if "seconds_per_step_data" in compute
                else ""
            )
        )
    print(f"written: {root / FINGERPRINT_FILE}, {root / PLAN_FILE}")
    if not_rendered:
        print(f"bundle files not rendered: {not_rendered}")
    else:
        print(f"rendered: {', '.join(BUNDLE_FILES)}")
    return 0
