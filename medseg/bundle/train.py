"""Train and evaluate a bundle on the fixed split (:mod:`medseg.data.datalist`) through its own configs."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.bundle.core import Bundle, run_workflow
from medseg.bundle.loader import is_ensemble
from medseg.data.datalist import DEFAULT_NUM_FOLDS
from medseg.errors import BundleError, InputError
from medseg.io.atomic import atomic_write_json
from medseg.precision import Precision, precision_overrides, resolve_precision

__all__ = [
    "ALL_FOLDS",
    "TEST_FOLD",
    "budget_overrides",
    "evaluate_bundle",
    "fold_overrides",
    "planned_precision",
    "train_bundle",
]

# The networks the engines of a bundle's train.json / evaluate.json call (wrapped for bf16 autocast).
TRAIN_NETWORKS = ("train#trainer#network", "validate#evaluator#network")
EVAL_NETWORKS = ("validate#evaluator#network",)

# The fixed split's test fold (sorted case ids, index % 5 == 0): evaluated, never trained or validated on.
TEST_FOLD = 0


def _dataset_override(data_dir: str | os.PathLike | None) -> dict[str, Any]:
    if data_dir is None:
        return {}
    path = Path(data_dir).resolve()
    if not (path / "dataset.json").is_file():
        raise InputError(
            f"data_dir {path} has no dataset.json: give the dataset folder (MSD layout, e.g. "
            "msd-task04-hippocampus, or nnU-Net raw layout with imagesTr/ and labelsTr/)",
            param="data_dir",
        )
    return {"dataset_dir": str(path)}


def _test_fold(workflow_config: Mapping[str, Any]) -> int:
    value = workflow_config.get("test_fold", TEST_FOLD)
    return value if isinstance(value, int) else TEST_FOLD


def _merged_config(bundle: Bundle, configs: list[str]) -> dict[str, Any]:
    """The bundle's configs merged as ``monai.bundle run`` merges them (unparsed)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(bundle.config(name)) for name in configs])
    return parser.get() or {}


# ``--fold all``: train on every non-test fold (nnU-Net's "fold all"); the bundle's validation fold is
# then trained on too, so its Dice only monitors the run and no decision may be taken from it.
ALL_FOLDS = "all"


def fold_overrides(
    fold: int | str, test_fold: int = TEST_FOLD, num_folds: int = DEFAULT_NUM_FOLDS
) -> dict[str, Any]:
    """``val_fold`` and ``train_folds`` for training with validation fold ``fold``.

    Planned bundles hold ``test_fold`` (0), ``val_fold`` and ``train_folds`` (every fold but those
    two); both are set here, so a bundle whose ``train_folds`` is a literal list stays consistent.
    ``fold="all"`` trains on every fold but the test fold and leaves ``val_fold`` as the bundle's
    (a fixed schedule whose final weights are kept: the validation fold only monitors).

    Raises:
        InputError: ``fold`` is the test fold (no training decision may look at it) or no fold.
    """
    if fold == ALL_FOLDS:
        return {"train_folds": [k for k in range(num_folds) if k != test_fold]}
    if not isinstance(fold, int):
        raise InputError(f"fold {fold!r} is neither a fold number nor {ALL_FOLDS!r}", param="fold")
    if fold == test_fold:
        raise InputError(
            f"fold {fold} is the test fold: no training decision (early stopping, checkpoint choice, "
            f"schedule) may look at it; choose a validation fold among "
            f"{', '.join(str(k) for k in range(num_folds) if k != test_fold)}, or {ALL_FOLDS!r} to train on "
            "all of them",
            param="fold",
        )
    if not 0 <= fold < num_folds:
        raise InputError(
            f"fold {fold} does not exist: choose a validation fold among 1..{num_folds - 1}", param="fold"
        )
    return {"val_fold": fold, "train_folds": [k for k in range(num_folds) if k not in (test_fold, fold)]}


def budget_overrides(
    config: Mapping[str, Any],
    minutes: float,
    start_time: float,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """Overrides that add :class:`medseg.engine.TimeBudget` to a training config.

    The handler is a new ``time_budget`` key attached to ``train#trainer`` by one more
    ``initialize`` expression (after the bundle's own), so the bundle files stay as they are and
    ``python -m monai.bundle run`` trains the bundle's own ``max_epochs``.

    Args:
        config: the bundle's merged, unparsed training config (its ``initialize`` list is kept).
        minutes: the budget.
        start_time: ``time.time()`` when the budget started.
        max_epochs: an upper bound on the fitted epochs (``--epochs``), or none.
    """
    if not minutes > 0:
        raise InputError(f"max_minutes must be positive, got {minutes}", param="max_minutes")
    initialize = config.get("initialize", [])
    if not isinstance(initialize, list) or "train" not in config or "trainer" not in config["train"]:
        raise BundleError(
            "the bundle's train.json has no train#trainer and initialize list to add a time budget to: "
            "regenerate it with medseg plan, or train without a time budget",
            param="max_minutes",
        )
    budget: dict[str, Any] = {
        "_target_": "medseg.engine.TimeBudget",
        "minutes": float(minutes),
        "start_time": float(start_time),
        "lr_scheduler": "@lr_scheduler" if "lr_scheduler" in config else None,
        "max_epochs": max_epochs,
    }
    return {"time_budget": budget, "initialize": [*initialize, "$@time_budget.attach(@train#trainer)"]}


def train_bundle(
    bundle: Bundle,
    data_dir: str | os.PathLike | None = None,
    fold: int | str | None = None,
    epochs: int | None = None,
    resume: bool = False,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    max_minutes: float | None = None,
    start_time: float | None = None,
    precision: str | None = None,
    seed: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Run the bundle's ``train.json``; returns what the run did and its validation metrics.

    Args:
        bundle: the bundle to train.
        data_dir: dataset folder, MSD or nnU-Net raw layout (default: the bundle's ``dataset_dir``).
        fold: validation fold, any but the test fold 0; the folds other than it and the test fold
            train. ``"all"`` trains on every fold but the test fold (the bundle's validation fold
            then only monitors). Default the bundle's (planned bundles: 1).
        epochs: maximum epochs (default the bundle's; with ``max_minutes`` an upper bound).
        resume: continue from the last epoch checkpoint in ``output_dir/checkpoints``.
        output_dir: where logs, checkpoints and the final ``model.pt`` go; default the bundle's
            ``runs/train`` and ``models/`` (which replaces the shipped weights).
        progress: show a progress bar.
        max_minutes: wall-clock budget from ``start_time`` (data caching included): the epochs
            and the learning-rate schedule are fitted to it (:class:`medseg.engine.TimeBudget`).
        start_time: ``time.time()`` when the budget started (default: now).
        precision: ``auto``, ``fp32`` or ``bf16`` for the forward passes of training and validation
            (:mod:`medseg.precision`; the weights, optimizer and loss stay fp32). ``auto`` follows the
            plan's measured choice (``training.precision`` in ``plans/plan.json``) on a CPU with bf16
            units of the CPU model it was measured on.
        seed: the bundle's ``seed`` (MONAI's ``set_determinism``: the network's initial weights, the
            shuffling and the augmentation draws) instead of its own; a short training's result
            varies with it (on Kvasir-SEG dev, 8 minutes: fold-1 Dice 0.62-0.71 over three seeds of
            one recipe), so comparisons of recipes use several.

    Returns:
        ``{"epochs", "iterations", "seconds", "val_fold", "train_folds", "last_metric", "best_metric",
        "best_metric_epoch", "precision"}``; the metrics are the validation fold's mean Dice (``-1``
        when no validation ran); ``precision`` is :meth:`medseg.precision.Precision.as_dict`.
    """
    start_time = time.time() if start_time is None else start_time
    configs = ["train.json"]
    config = _merged_config(bundle, configs)
    overrides.update(_dataset_override(data_dir))
    if fold is not None:
        overrides.update(fold_overrides(fold, _test_fold(config)))
    if epochs is not None:
        if epochs < 1:
            raise InputError(f"epochs must be at least 1, got {epochs}", param="epochs")
        overrides["max_epochs"] = epochs
    if max_minutes is not None:
        overrides.update(budget_overrides(config, max_minutes, start_time, epochs))
    if output_dir is not None:
        out = Path(output_dir).resolve()
        overrides["output_dir"] = str(out)
        overrides["ckpt_dir"] = str(out / "models")
    if seed is not None:
        if "seed" not in config:
            raise BundleError(
                f'bundle {bundle.name}\'s train.json has no seed to replace; add "seed" and '
                "monai.utils.set_determinism(seed=@seed) to its initialize, or train without --seed",
                param="seed",
            )
        if not 0 <= seed < 2**32:
            raise InputError(f"seed must be in 0..2**32-1, got {seed}", param="seed")
        overrides["seed"] = int(seed)
    overrides["resume"] = resume
    overrides["progress"] = progress
    chosen = _precision(precision, training=True, planned=planned_precision(bundle))
    overrides.update(precision_overrides(config, chosen, TRAIN_NETWORKS))
    workflow = run_workflow(bundle, configs, workflow_type="train", **overrides)
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    trainer = workflow.parser.get_parsed_content("train#trainer")
    key = evaluator.state.key_metric_name
    last = evaluator.state.metrics.get(key) if key else None
    return {
        "epochs": int(trainer.state.epoch),
        "iterations": int(trainer.state.iteration),
        "seconds": time.time() - start_time,
        "val_fold": int(workflow.parser.get_parsed_content("val_fold")),
        "train_folds": [int(k) for k in workflow.parser.get_parsed_content("train_folds")],
        "last_metric": float(last) if _finite(last) else -1.0,
        "best_metric": float(evaluator.state.best_metric),
        "best_metric_epoch": int(evaluator.state.best_metric_epoch),
        "precision": chosen.as_dict(),
    }


def evaluate_bundle(
    bundle: Bundle,
    data_dir: str | os.PathLike | None = None,
    fold: int | None = None,
    output: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    precision: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate the bundle's weights on a fold with ``train.json`` + ``evaluate.json``.

    Per-class Dice and HD95 (mm) are computed on each case's original grid. Writes the
    summary to ``output`` (JSON) and per-case CSVs beside it.

    Args:
        bundle: the bundle.
        data_dir: dataset folder, MSD or nnU-Net raw layout (default: the bundle's ``dataset_dir``).
        fold: the fold evaluated; default the test fold (the bundle's ``test_fold``, 0).
        output: the JSON summary (default ``BUNDLE/runs/eval/metrics.json``).
        weights: weights to evaluate instead of ``BUNDLE/models/model.pt``.
        precision: ``auto``, ``fp32`` or ``bf16`` for the network's forward (:mod:`medseg.precision`).

    Returns:
        ``{"bundle", "version", "fold", "cases", "precision", "seconds", "metrics": {name: value}}``;
        ``metrics`` holds ``val_mean_dice`` and per-class ``val_dice_<label>`` / ``val_hd95_<label>``;
        ``seconds`` is the evaluation run's wall time.
    """
    configs = ["train.json", "evaluate.json"]
    overrides.update(_dataset_override(data_dir))
    config = _merged_config(bundle, configs)
    test_fold = _test_fold(config)
    chosen = _precision(precision)
    overrides.update(precision_overrides(config, chosen, EVAL_NETWORKS))
    fold = test_fold if fold is None else fold
    if not 0 <= fold < DEFAULT_NUM_FOLDS:
        raise InputError(f"fold {fold} does not exist: choose 0..{DEFAULT_NUM_FOLDS - 1}", param="fold")
    overrides["val_fold"] = fold
    if weights is not None and is_ensemble(bundle):
        raise BundleError(
            f"bundle {bundle.name} is an ensemble: its members' weights files are named in plans/ensemble.json "
            "and loaded by its network_def; evaluate one member with its configuration's bundle instead",
            param="weights",
        )
    if weights is not None:
        weights = Path(weights).resolve()
        if not weights.is_file():
            raise BundleError(f"weights file {weights} not found", param="weights")
        overrides["ckpt_dir"] = str(weights.parent)
        overrides["checkpointloader#load_path"] = str(weights)
    elif not bundle.weights.is_file() and not is_ensemble(bundle):
        raise BundleError(f"bundle {bundle.name} has no models/model.pt: train it first (medseg train)")
    out_json = Path(output).resolve() if output else bundle.root / "runs" / "eval" / "metrics.json"
    overrides["output_dir"] = str(out_json.parent)
    started = time.perf_counter()
    workflow = run_workflow(bundle, configs, workflow_type="eval", **overrides)
    seconds = time.perf_counter() - started
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if _finite(v)}
    result = {
        "bundle": bundle.name,
        "version": bundle.version,
        "fold": int(workflow.parser.get_parsed_content("val_fold")),
        "cases": len(workflow.parser.get_parsed_content("val_datalist")),
        "precision": chosen.as_dict(),
        "seconds": round(seconds, 2),
        "metrics": metrics,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_json, result)
    result["output"] = str(out_json)
    return result


def planned_precision(bundle: Bundle) -> dict[str, Any] | None:
    """The training precision a measured plan chose (``medseg plan --measure``): ``{"value": "bf16" |
    "fp32", "cpu", "bf16_speedup", ...}`` from ``plans/plan.json``'s ``training`` entry, or None for a
    bundle without a plan or a plan that measured none."""
    from medseg.render.records import PLAN_FILE, read_plan

    if not (bundle.root / PLAN_FILE).is_file():
        return None
    plan = read_plan(bundle.root)
    if "training" not in plan.entries or "precision" not in plan["training"]:
        return None
    return {**plan.data("training").get("precision", {}), "value": plan["training"]["precision"]}


def _precision(
    precision: str | None, training: bool = False, planned: Mapping[str, Any] | None = None
) -> Precision:
    """The run's precision on the device the bundles pick (``cuda:0`` when available, else the CPU)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return resolve_precision(precision, device, training=training, planned=planned)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
