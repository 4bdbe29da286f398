"""The standard click protocol: a simulated user corrects an interactive bundle, one click at a time.

As in the interactive-segmentation literature (DeepGrow, DeepEdit, nnInteractive's benchmark),
after each prediction the user clicks inside the largest connected region of error (voxels
whose predicted label is not the true one), at the voxel farthest from that region's border (its
"centre", where a person aims), and gives the true label there: a label name, or ``background``.
Clicks accumulate. After ``k`` clicks the prediction is scored (Dice per label on the image's own
grid, nnU-Net's rule for empty cases: :func:`medseg.evaluation.case_dice`); ``medseg evaluate
BUNDLE --fold 0 --clicks 0 1 3 5`` reports ``mean_dice_clicks_<k>`` (mean over labels of the mean
over cases) and the per-label means. Zero clicks is the automatic mode. Everything runs on the
stored grid through :class:`~medseg.interactive.session.ClickPredictor`, the path a served click
takes, so the same protocol measures the HTTP API.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError

__all__ = ["evaluate_clicks", "next_click", "run_protocol"]


def next_click(pred: np.ndarray, label: np.ndarray, names: Mapping[int, str]) -> tuple[str, list[int]] | None:
    """The simulated user's next click, or None when the prediction is already right everywhere.

    Args:
        pred: the predicted label map.
        label: the true label map, same shape.
        names: ``{label value: click name}`` (0: ``background``).

    Returns:
        ``(name, [i, j, k])``: the true label's name at the chosen voxel and the voxel's indices.
    """
    from scipy import ndimage

    error = np.asarray(pred) != np.asarray(label)
    if not error.any():
        return None
    regions, _ = ndimage.label(error)
    largest = int(np.argmax(np.bincount(regions.ravel())[1:])) + 1
    # padded by one voxel of "outside", so that the image's edge counts as a border too
    region = np.pad(regions == largest, 1)
    distance = ndimage.distance_transform_edt(region)[(slice(1, -1),) * error.ndim]
    point = [int(v) for v in np.unravel_index(int(np.argmax(distance)), error.shape)]
    return names[int(label[tuple(point)])], point


def run_protocol(
    predict: Callable[[Mapping[str, list[list[int]]]], np.ndarray],
    label: np.ndarray,
    names: Mapping[int, str],
    counts: Sequence[int],
) -> dict[int, list[float]]:
    """Dice per foreground label after each number of clicks in ``counts``, for one image.

    Args:
        predict: the label map under given clicks (``{name: [[i, j, k], ...]}``), on ``label``'s grid.
        label: the true label map.
        names: ``{label value: click name}``, 0 included.
        counts: the click counts to score (``[0, 1, 3, 5]``).

    Returns:
        ``{k: [Dice of each foreground label, by value]}``.
    """
    from medseg.evaluation import case_dice

    classes = [value for value in sorted(names) if value != 0]
    clicks: dict[str, list[list[int]]] = {names[v]: [] for v in sorted(names)}
    scores: dict[int, list[float]] = {}
    pred = predict(clicks)
    for k in range(max(counts) + 1):
        if k in counts:
            scores[k] = case_dice(pred, label, classes)
        if k == max(counts):
            break
        click = next_click(pred, label, names)
        if click is not None:  # a perfect prediction stays as it is
            clicks[click[0]].append(click[1])
            pred = predict(clicks)
    return scores


def evaluate_clicks(
    bundle: Any,
    counts: Sequence[int],
    fold: int | None = None,
    data_dir: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run the click protocol on every case of a fold; write and return the figures.

    Args:
        bundle: an interactive :class:`~medseg.bundle.core.Bundle`.
        counts: click counts to report, each >= 0.
        fold: the fold (default the test fold 0).
        data_dir: the dataset (default the bundle's ``dataset_dir``).
        output: the JSON file (default ``BUNDLE/runs/eval/clicks.json``).
        weights: weights to use instead of ``models/model.pt``.
        device: where the network runs.

    Returns:
        ``{"bundle", "version", "fold", "cases", "clicks", "seconds", "metrics", "per_case", "output"}``;
        ``metrics`` holds ``mean_dice_clicks_<k>`` and ``dice_clicks_<k>`` (``{label: mean}``).

    Raises:
        BundleError: the bundle is not interactive.
        InputError: a negative click count or a fold outside 0..4.
    """
    from monai.transforms import LoadImage

    from medseg.data import split_folds
    from medseg.data.datalist import DEFAULT_NUM_FOLDS
    from medseg.data.dataset import load_datalist
    from medseg.evaluation import mean_dice
    from medseg.interactive.session import ClickPredictor
    from medseg.io.atomic import atomic_write_json

    counts = sorted({int(k) for k in counts})
    if not counts or counts[0] < 0:
        raise InputError("--clicks takes click counts of 0 or more, e.g. --clicks 0 1 3 5", param="clicks")
    fold = 0 if fold is None else int(fold)
    if not 0 <= fold < DEFAULT_NUM_FOLDS:
        raise InputError(f"fold {fold} does not exist: choose 0..{DEFAULT_NUM_FOLDS - 1}", param="fold")
    predictor = ClickPredictor(bundle, device=device, weights=weights)
    names = {value: name for name, value in predictor.label_names.items()}
    labels = {value: bundle.labels.get(value, name) for value, name in names.items()}
    dataset = data_dir or predictor.inference.parser.get_parsed_content("dataset_dir")
    reader = LoadImage(image_only=True)
    per_case: dict[int, dict[str, list[float]]] = {k: {} for k in counts}
    started = time.perf_counter()
    for item in split_folds(load_datalist(dataset), fold):
        label = np.asarray(reader(item["label"])).round().astype(np.int16)
        prepared = predictor.prepare(item["image"])
        scores = run_protocol(partial(predictor.predict, prepared), label, names, counts)
        for k in counts:
            per_case[k][item["case_id"]] = scores[k]
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {}
    for k in counts:
        summary = mean_dice(per_case[k], labels)
        metrics[f"mean_dice_clicks_{k}"] = summary["mean_dice"]
        metrics[f"dice_clicks_{k}"] = summary["dice"]
    out = Path(output).resolve() if output else bundle.root / "runs" / "eval" / "clicks.json"
    result = {
        "bundle": bundle.name,
        "version": bundle.version,
        "fold": fold,
        "cases": len(per_case[counts[0]]),
        "clicks": counts,
        "seconds": round(seconds, 2),
        "metrics": metrics,
        "per_case": {str(k): per_case[k] for k in counts},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return {**result, "output": str(out)}
