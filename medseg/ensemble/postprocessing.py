"""Connected-component postprocessing, accepted only where cross-validation says it helps.

nnU-Net's rule (``nnunetv2/postprocessing/remove_connected_components.py``), on the out-of-fold
predictions of the folds 1-4 (never the test fold):

1. keep only the largest connected component of all foreground together; accept the step if the
   mean Dice over the classes improves and no class gets worse;
2. then, for each class (datasets with more than one), keep only that class's largest component;
   accept it on the same condition, on top of the steps already accepted.

The decision is ``{"foreground": bool, "classes": [...]}``: the arguments of
:class:`medseg.postprocess.LargestComponentsd`, which the bundle's ``inference.json`` then runs
after its argmax (and ``medseg segment`` and ``medseg serve`` with it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from medseg.postprocess import largest_components

__all__ = ["learn_postprocessing", "NO_POSTPROCESSING"]

NO_POSTPROCESSING: dict[str, Any] = {"foreground": False, "classes": []}


def _mean_dice(
    cases: Sequence[tuple[np.ndarray, np.ndarray]], classes: Sequence[int]
) -> np.ndarray:
    from medseg.evaluation import case_dice

    table = np.array([case_dice(pred, ref, classes) for pred, ref in cases], dtype=float)
    return np.nanmean(table.reshape(-1, len(classes)), axis=0)


def _better(after: np.ndarray, before: np.ndarray) -> bool:
    """nnU-Net's acceptance: the class mean rises and no class falls."""
    return bool(after.mean() > before.mean() and np.all(after >= before))


def learn_postprocessing(
    cases: Sequence[tuple[np.ndarray, np.ndarray]],
    labels: Mapping[int, str],
    apply: Callable[..., np.ndarray] = largest_components,
) -> dict[str, Any]:
    """Decide nnU-Net's connected-component steps on (prediction, reference) label maps.

    Args:
        cases: out-of-fold predictions and their references, as integer label maps.
        labels: the label values and names (background 0 included).
        apply: the step (:func:`medseg.postprocess.largest_components`).

    Returns:
        ``{"foreground", "classes"}`` (the accepted steps) with ``"steps"``: each step tried, the
        class Dice before and after, and whether it was accepted; ``"dice_before"`` and
        ``"dice_after"`` per label name over all cases.
    """
    classes = [k for k in sorted(labels) if k != 0]
    current = [(pred, ref) for pred, ref in cases]
    baseline = _mean_dice(current, classes)
    score = baseline
    steps: list[dict[str, Any]] = []
    decision: dict[str, Any] = {"foreground": False, "classes": []}

    def attempt(name: str, **options: Any) -> bool:
        nonlocal current, score
        trial = [(apply(pred, **options), ref) for pred, ref in current]
        after = _mean_dice(trial, classes)
        accepted = _better(after, score)
        steps.append(
            {
                "step": name,
                "dice_before": [round(float(v), 5) for v in score],
                "dice_after": [round(float(v), 5) for v in after],
                "accepted": accepted,
            }
        )
        if accepted:
            current, score = trial, after
        return accepted

    decision["foreground"] = attempt("largest component of all foreground", foreground=True)
    if len(classes) > 1:
        for c in classes:
            if attempt(f"largest component of {labels[c]}", classes=[c]):
                decision["classes"].append(c)
    names = [labels[c] for c in classes]
    return {
        **decision,
        "steps": steps,
        "dice_before": {n: round(float(v), 4) for n, v in zip(names, baseline, strict=True)},
        "dice_after": {n: round(float(v), 4) for n, v in zip(names, score, strict=True)},
    }
