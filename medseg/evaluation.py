"""Dice of segmentations written to files, the way nnU-Net scores a folder of predictions.

One place for the per-case Dice that cross-validation (:mod:`medseg.ensemble`) decides on and that
the benchmarks score medseg's and nnU-Net's test-fold outputs with: per case and label on the case's
own grid, a case where both prediction and reference are empty is left out of that label's mean
(nnU-Net's rule), then the mean over cases, then over labels. (``medseg evaluate`` uses MONAI's
``MeanDice`` inside the bundle's evaluator, which follows the same rule.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError

__all__ = ["case_dice", "mean_dice", "score_folder"]


def case_dice(pred: np.ndarray, reference: np.ndarray, classes: Sequence[int]) -> list[float]:
    """Dice of each class for one case; NaN where both are empty (nnU-Net's rule: ignored in means)."""
    out = []
    for c in classes:
        p, r = pred == c, reference == c
        denominator = int(p.sum()) + int(r.sum())
        out.append(float("nan") if denominator == 0 else 2.0 * int((p & r).sum()) / denominator)
    return out


def mean_dice(per_case: Mapping[str, Sequence[float]], labels: Mapping[int, str]) -> dict[str, Any]:
    """``{"cases", "dice": {label name: mean over cases}, "mean_dice"}`` from per-case Dice rows."""
    names = [labels[k] for k in sorted(labels) if k != 0]
    table = np.array(list(per_case.values()), dtype=float).reshape(-1, len(names))
    dice = {name: round(float(np.nanmean(table[:, i])), 4) for i, name in enumerate(names)}
    return {"cases": len(per_case), "dice": dice, "mean_dice": round(float(np.mean(list(dice.values()))), 4)}


def _read(path: Path) -> np.ndarray:
    from monai.transforms import LoadImage

    return np.asarray(LoadImage(image_only=True)(str(path))).round().astype(np.int16)


def score_folder(
    folder: str | os.PathLike,
    dataset: str | os.PathLike,
    fold: int,
    labels: Mapping[int, str],
    suffix: str = "",
) -> dict[str, Any]:
    """Score the files ``<case><suffix><ending>`` (or ``<case>_0000<suffix><ending>``, a bundle's output
    for an nnU-Net-layout image) in ``folder`` against fold ``fold``'s labels.

    Raises:
        InputError: a case of the fold has no prediction, or one on another grid.
    """
    from medseg.data import split_folds
    from medseg.data.dataset import load_datalist

    folder = Path(folder)
    classes = [k for k in sorted(labels) if k != 0]
    per_case = {}
    for item in split_folds(load_datalist(dataset), fold):
        ending = "".join(Path(item["label"]).suffixes[-2:]) if item["label"].endswith(".nii.gz") else Path(item["label"]).suffix
        # a bundle names its output after the image file: nnU-Net-layout images end in _0000
        candidates = [folder / f"{item['case_id']}{tail}{suffix}{ending}" for tail in ("", "_0000")]
        path = next((c for c in candidates if c.is_file()), candidates[0])
        if not path.is_file():
            raise InputError(f"no prediction {path.name} in {folder} for case {item['case_id']} of fold {fold}")
        pred, reference = _read(path), _read(Path(item["label"]))
        if pred.shape != reference.shape:
            raise InputError(f"{path.name}: grid {pred.shape} differs from its label's {reference.shape}")
        per_case[item["case_id"]] = case_dice(pred, reference, classes)
    return {**mean_dice(per_case, labels), "per_case": per_case}
