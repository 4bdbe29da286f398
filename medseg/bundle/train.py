"""Train and evaluate a bundle on the fixed split (:mod:`medseg.data.datalist`) through its own configs."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from medseg.bundle.core import Bundle, run_workflow
from medseg.data.datalist import DEFAULT_NUM_FOLDS
from medseg.errors import BundleError, InputError
from medseg.io.atomic import atomic_write_json

__all__ = ["train_bundle", "evaluate_bundle"]


def _data_overrides(data_dir: str | os.PathLike | None, fold: int | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        path = Path(data_dir).resolve()
        if not (path / "dataset.json").is_file():
            raise InputError(
                f"data_dir {path} has no dataset.json: give the MSD task folder (e.g. msd-task04-hippocampus)",
                param="data_dir",
            )
        overrides["dataset_dir"] = str(path)
    if fold is not None:
        if not 0 <= fold < DEFAULT_NUM_FOLDS:
            raise InputError(f"fold {fold} does not exist: choose 0..{DEFAULT_NUM_FOLDS - 1}", param="fold")
        overrides["val_fold"] = fold
    return overrides


def train_bundle(
    bundle: Bundle,
    data_dir: str | os.PathLike | None = None,
    fold: int | None = None,
    epochs: int | None = None,
    resume: bool = False,
    output_dir: str | os.PathLike | None = None,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, float]:
    """Run the bundle's ``train.json``; returns the best validation metrics.

    Args:
        bundle: the bundle to train.
        data_dir: MSD task folder (default: the bundle's ``dataset_dir``).
        fold: validation fold (the others train); default the bundle's (0).
        epochs: maximum epochs (default the bundle's).
        resume: continue from the last epoch checkpoint in ``output_dir/checkpoints``.
        output_dir: where logs, checkpoints and the best ``model.pt`` go; default the bundle's
            ``runs/train`` and ``models/`` (which replaces the shipped weights).
        progress: show a progress bar.
    """
    overrides.update(_data_overrides(data_dir, fold))
    if epochs is not None:
        if epochs < 1:
            raise InputError(f"epochs must be at least 1, got {epochs}", param="epochs")
        overrides["max_epochs"] = epochs
    if output_dir is not None:
        out = Path(output_dir).resolve()
        overrides["output_dir"] = str(out)
        overrides["ckpt_dir"] = str(out / "models")
    overrides["resume"] = resume
    overrides["progress"] = progress
    workflow = run_workflow(bundle, ["train.json"], workflow_type="train", **overrides)
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    return {
        "best_metric": float(evaluator.state.best_metric),
        "best_metric_epoch": int(evaluator.state.best_metric_epoch),
        "epochs": int(workflow.parser.get_parsed_content("train#trainer").state.epoch),
    }


def evaluate_bundle(
    bundle: Bundle,
    data_dir: str | os.PathLike | None = None,
    fold: int | None = None,
    output: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Evaluate the bundle's weights on a fold with ``train.json`` + ``evaluate.json``.

    Per-class Dice and HD95 (mm) are computed on each case's original grid. Writes the
    summary to ``output`` (JSON) and per-case CSVs beside it.

    Returns:
        ``{"bundle", "version", "fold", "cases", "metrics": {name: value}}``.
    """
    overrides.update(_data_overrides(data_dir, fold))
    if weights is not None:
        weights = Path(weights).resolve()
        if not weights.is_file():
            raise BundleError(f"weights file {weights} not found", param="weights")
        overrides["ckpt_dir"] = str(weights.parent)
        overrides["checkpointloader#load_path"] = str(weights)
    elif not bundle.weights.is_file():
        raise BundleError(f"bundle {bundle.name} has no models/model.pt: train it first (medseg train)")
    out_json = Path(output).resolve() if output else bundle.root / "runs" / "eval" / "metrics.json"
    overrides["output_dir"] = str(out_json.parent)
    workflow = run_workflow(bundle, ["train.json", "evaluate.json"], workflow_type="eval", **overrides)
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if _finite(v)}
    result = {
        "bundle": bundle.name,
        "version": bundle.version,
        "fold": int(workflow.parser.get_parsed_content("val_fold")),
        "cases": len(workflow.parser.get_parsed_content("val_datalist")),
        "metrics": metrics,
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_json, result)
    result["output"] = str(out_json)
    return result


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
