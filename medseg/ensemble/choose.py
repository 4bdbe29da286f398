"""Choose among planned configurations and their ensembles by cross-validated Dice.

nnU-Net's ``find_best_configuration``: every configuration that was cross-validated, and every pair
of them (their out-of-fold softmax averaged; ``max_configurations`` allows larger combinations), is
scored by the mean Dice over all out-of-fold cases of folds 1-4; the best wins (on a tie, the one
with fewer configurations). Its postprocessing is then learned on its own out-of-fold predictions
(:mod:`medseg.ensemble.postprocessing`). Fold 0 is never read here.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from medseg.bundle.core import Bundle, open_bundle
from medseg.ensemble.cv import cv_folds, load_oof, load_reference, member_weights
from medseg.errors import BundleError, ConfigError
from medseg.evaluation import case_dice
from medseg.render.records import read_cv

__all__ = ["choose_configuration", "check_members"]

logger = logging.getLogger(__name__)


def check_members(bundles: Sequence[Bundle]) -> None:
    """Refuse configurations that cannot be ensembled: not cross-validated, other labels or
    preprocessing (an ensemble prepares the image once)."""
    if not bundles:
        raise ConfigError("give at least one cross-validated bundle", param="bundles")
    first = bundles[0]
    for bundle in bundles:
        cv = read_cv(bundle.root)
        recorded = (cv or {}).get("members", {})
        # plans/cv.json is shipped, the members themselves (BUNDLE/cv/fold_K) are not
        missing = [k for k in cv_folds() if str(k) not in recorded or not member_weights(bundle, k).is_file()]
        if missing:
            raise BundleError(
                f"bundle {bundle.name} has no cross-validation member for fold {missing[0]} here "
                f"({member_weights(bundle, missing[0])}, recorded in plans/cv.json): run "
                f"medseg train {bundle.root} --cv"
            )
        if bundle.labels != first.labels:
            raise ConfigError(
                f"bundles {first.name} and {bundle.name} segment different labels; an ensemble needs the same",
                param="bundles",
            )
        a, b = _preprocessing(first), _preprocessing(bundle)
        if a != b:
            raise ConfigError(
                f"bundles {first.name} and {bundle.name} prepare images differently ({a} vs {b}); an "
                "ensemble runs its members on one prepared image: plan them from the same dataset",
                param="bundles",
            )


def _preprocessing(bundle: Bundle) -> dict[str, Any]:
    from medseg.render.records import read_plan

    plan = read_plan(bundle.root)
    return {k: plan[k] for k in ("target_spacing", "normalization")}


def choose_configuration(
    bundles: Sequence[Bundle | str | os.PathLike],
    data_dir: str | os.PathLike | None = None,
    max_configurations: int = 2,
) -> dict[str, Any]:
    """Score every configuration and every combination of up to ``max_configurations`` on the OOF
    predictions; learn the postprocessing of the best.

    Returns:
        ``{"candidates": [{"configurations", "dice", "mean_dice"}...] (best first), "chosen": [names],
        "postprocessing": {...}, "tta": {...}, "cases": n}``.
    """
    from medseg.bundle.loader import read_inference_config
    from medseg.data import split_folds
    from medseg.data.dataset import load_datalist
    from medseg.ensemble.postprocessing import learn_postprocessing

    opened = [b if isinstance(b, Bundle) else open_bundle(b) for b in bundles]
    check_members(opened)
    names = [b.name for b in opened]
    if len(set(names)) != len(names):
        raise ConfigError(f"bundle names repeat: {names}", param="bundles")
    # the labels are read as the first bundle reads its images (no network or weights needed for that)
    parser = read_inference_config(opened[0])
    inference = SimpleNamespace(preprocessing=parser.get_parsed_content("preprocessing", instantiate=True))
    dataset = Path(data_dir) if data_dir else Path(parser.get_parsed_content("dataset_dir"))
    datalist = load_datalist(dataset)
    cases = [(item, fold) for fold in cv_folds() for item in split_folds(datalist, fold)]
    labels = opened[0].labels
    classes = [k for k in sorted(labels) if k != 0]
    combos = [
        combo
        for size in range(1, min(max_configurations, len(opened)) + 1)
        for combo in itertools.combinations(range(len(opened)), size)
    ]
    scores: dict[tuple[int, ...], list[list[float]]] = {c: [] for c in combos}
    for item, fold in cases:
        reference = load_reference(inference, item["label"])
        probs = [load_oof(b, item["case_id"], fold) for b in opened]
        for combo in combos:
            mean = sum(probs[i] for i in combo) / len(combo)
            scores[combo].append(case_dice(mean.argmax(0), reference, classes))
    candidates = []
    for combo in combos:
        table = np.array(scores[combo], dtype=float)
        dice = {labels[c]: round(float(np.nanmean(table[:, i])), 4) for i, c in enumerate(classes)}
        candidates.append(
            {
                "configurations": [names[i] for i in combo],
                "dice": dice,
                "mean_dice": round(float(np.mean(list(dice.values()))), 4),
                "_mean": float(np.mean([np.nanmean(table[:, i]) for i in range(len(classes))])),
                "_combo": combo,
            }
        )
    candidates.sort(key=lambda c: (-c["_mean"], len(c["_combo"])))
    best = candidates[0]["_combo"]
    logger.info("chosen by cross-validation: %s", " + ".join(names[i] for i in best))

    predictions = []
    for item, fold in cases:
        mean = sum(load_oof(opened[i], item["case_id"], fold) for i in best) / len(best)
        predictions.append((mean.argmax(0).astype(np.uint8), load_reference(inference, item["label"])))
    postprocessing = learn_postprocessing(predictions, labels)
    flips = {b.name: b.input_format.get("tta_flip_axes", []) for b in (opened[i] for i in best)}
    tta = {
        "used": False,
        "why": "the plans mirror no axis (orientation unknown or not safe), so flipping is no valid "
        "test-time augmentation"
        if not any(flips.values())
        else "the out-of-fold predictions are without flips, so cross-validation has not shown that "
        "flip TTA helps",
    }
    return {
        "candidates": [{k: v for k, v in c.items() if not k.startswith("_")} for c in candidates],
        "chosen": [names[i] for i in best],
        "postprocessing": postprocessing,
        "tta": tta,
        "cases": len(cases),
    }
