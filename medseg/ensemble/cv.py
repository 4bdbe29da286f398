"""Cross-validation members of a planned bundle and their out-of-fold predictions.

nnU-Net trains one network per fold and predicts each fold with the network that did not train on
it; those out-of-fold (OOF) probabilities are what postprocessing and the choice between
configurations are decided on (``nnunetv2/evaluation/find_best_configuration.py``). medseg does the
same on the four non-test folds of its fixed split: the member of fold k trains on the other three
(and validates on k while it trains), then predicts fold k. Fold 0, the test fold, is never seen.

Layout inside the bundle (not shipped; ``cv/`` is ignored by git)::

    cv/fold_<k>/models/model.pt      the member's final EMA weights
    cv/fold_<k>/log.csv, checkpoints/  its training run (an interrupted one resumes from the epoch
                                     checkpoints; they are deleted once the member is done)
    cv/fold_<k>/oof/<case>.npz       softmax on the case's original grid (float16, compressed)
    cv/fold_<k>/member.json          epochs, minutes, Dice on fold k per class

and the summary ``plans/cv.json`` (per member and pooled Dice), which the bundle's README shows.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.bundle.core import Bundle
from medseg.data.datalist import DEFAULT_NUM_FOLDS
from medseg.errors import BundleError, InputError
from medseg.evaluation import case_dice, mean_dice
from medseg.io.atomic import atomic_write, atomic_write_json
from medseg.render.records import CV_RECORD, PLAN_FILE, read_plan, read_record

__all__ = [
    "CV_FOLDS",
    "cv_folds",
    "load_oof",
    "load_reference",
    "member_dir",
    "member_weights",
    "predict_oof",
    "summarize",
    "train_cv",
]

logger = logging.getLogger(__name__)

CV_FOLDS = (1, 2, 3, 4)  # every fold but the test fold 0


def cv_folds(test_fold: int = 0, num_folds: int = DEFAULT_NUM_FOLDS) -> list[int]:
    """The folds members are trained for: every fold but the test fold."""
    return [k for k in range(num_folds) if k != test_fold]


def member_dir(bundle: Bundle, fold: int) -> Path:
    """Where the member validated on ``fold`` lives inside the bundle."""
    return bundle.root / "cv" / f"fold_{fold}"


def member_weights(bundle: Bundle, fold: int) -> Path:
    """The final (EMA) weights of the member validated on ``fold``; written when its run completes."""
    return member_dir(bundle, fold) / "models" / "model.pt"


def _dataset_dir(inference: Any, data_dir: str | os.PathLike | None) -> Path:
    path = Path(data_dir) if data_dir is not None else Path(inference.parser.get_parsed_content("dataset_dir"))
    if not (path / "dataset.json").is_file():
        raise InputError(
            f"data_dir {path} has no dataset.json: give the dataset folder the bundle was planned from",
            param="data_dir",
        )
    return path.resolve()


def load_reference(inference: Any, label_path: str | os.PathLike) -> np.ndarray:
    """A case's label map as the bundle's loader reads images (same reader, same array axes)."""
    transforms = list(getattr(inference.preprocessing, "transforms", [inference.preprocessing]))
    data: Any = {"image": str(label_path)}
    for transform in transforms[:2]:  # the loader and EnsureChannelFirstd
        data = transform(data)
    return np.asarray(data["image"])[0].round().astype(np.int16)


def predict_oof(
    bundle: Bundle,
    weights: str | os.PathLike,
    fold: int,
    output_dir: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Predict every case of ``fold`` with one member; save the softmax on each case's original grid.

    The bundle's own ``inference.json`` prepares the image and runs the window (as ``medseg
    segment`` would); the probabilities are mapped back with MONAI's ``Invertd``, exactly as the
    bundle's postprocessing does before its argmax.

    Returns:
        ``{"fold", "cases", "dice": {label: mean}, "mean_dice", "per_case": {case: [Dice per class]}}``.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    from medseg.bundle.loader import load_inference
    from medseg.data import split_folds
    from medseg.data.dataset import load_datalist

    inference = load_inference(bundle, device, weights=weights)
    dataset = _dataset_dir(inference, data_dir)
    items = split_folds(load_datalist(dataset), fold)
    invert = Invertd(keys="pred", transform=inference.preprocessing, orig_keys="image", nearest_interp=False)
    classes = [k for k in sorted(bundle.labels) if k != 0]
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_case: dict[str, list[float]] = {}
    for item in items:
        data = inference.preprocessing({"image": item["image"]})
        image = data["image"]
        with torch.inference_mode():
            logits = inference.inferer(image[None].to(device), inference.network)
        prob = torch.softmax(logits.float(), dim=1)[0].cpu()
        data["pred"] = MetaTensor(prob, meta=image.meta, applied_operations=image.applied_operations)
        prob = np.asarray(invert(data)["pred"], dtype=np.float16)
        reference = load_reference(inference, item["label"])
        if prob.shape[1:] != reference.shape:
            raise BundleError(
                f"case {item['case_id']}: the prediction's grid {prob.shape[1:]} differs from its label's "
                f"{reference.shape}"
            )
        atomic_write(out / f"{item['case_id']}.npz", lambda p, a=prob: np.savez_compressed(p, probabilities=a))
        per_case[item["case_id"]] = case_dice(prob.argmax(0), reference, classes)
    return {"fold": fold, "cases": len(items), **mean_dice(per_case, bundle.labels), "per_case": per_case}


def load_oof(bundle: Bundle, case: str, fold: int) -> np.ndarray:
    """The saved out-of-fold probabilities of one case (float32, (C, *spatial))."""
    path = member_dir(bundle, fold) / "oof" / f"{case}.npz"
    if not path.is_file():
        raise BundleError(
            f"bundle {bundle.name} has no out-of-fold prediction of case {case} ({path}): run "
            f"medseg train {bundle.name} --cv first"
        )
    with np.load(path) as npz:
        return npz["probabilities"].astype(np.float32)


def summarize(bundle: Bundle, members: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """``plans/cv.json``: each member's run and fold Dice, and the Dice pooled over all OOF cases."""
    pooled: dict[str, list[float]] = {}
    for member in members.values():
        pooled.update(member["per_case"])
    return {
        "members": {
            str(k): {key: m[key] for key in ("fold", "cases", "epochs", "minutes", "dice", "mean_dice")}
            for k, m in sorted(members.items())
        },
        "cases": len(pooled),
        **mean_dice(pooled, bundle.labels),
    }


def train_cv(
    bundle: Bundle,
    data_dir: str | os.PathLike | None = None,
    folds: Iterable[int] | None = None,
    epochs: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    device: str = "cpu",
    precision: str | None = None,
) -> dict[str, Any]:
    """Train (or finish) one member per fold, predict its fold, and write ``plans/cv.json``.

    A member whose ``member.json`` exists is done and skipped; one with epoch checkpoints resumes.
    Run several folds as parallel processes with ``folds`` (each writes only its own folder); the
    summary covers every member found.

    Args:
        bundle: a planned bundle.
        data_dir: the dataset (default the bundle's ``dataset_dir``).
        folds: members to train (default every fold but the test fold).
        epochs: epochs per member (default the bundle's).
        max_minutes: wall-clock budget per member (:func:`medseg.bundle.train_bundle`).
        progress: progress bars.
        device: where the out-of-fold predictions run.
        precision: the members' training precision (``auto``, ``fp32``, ``bf16``; :mod:`medseg.precision`).

    Returns:
        the summary written to ``plans/cv.json``.
    """
    from medseg.bundle.train import TEST_FOLD, train_bundle

    wanted = list(folds) if folds is not None else cv_folds(TEST_FOLD)
    if TEST_FOLD in wanted:
        raise InputError(
            f"fold {TEST_FOLD} is the test fold: no member may be validated or chosen on it", param="folds"
        )
    for fold in wanted:
        folder = member_dir(bundle, fold)
        record = folder / "member.json"
        if record.is_file():
            logger.info("member of fold %d is done (%s)", fold, record)
            _drop_checkpoints(folder)
            continue
        start = time.time()
        weights = member_weights(bundle, fold)
        if weights.is_file():  # the final weights are written when a run completes
            logger.info("member of fold %d is trained (%s); predicting its fold", fold, weights)
            trained = _finished_run(folder)
        else:
            resume = (folder / "checkpoints").is_dir() and any((folder / "checkpoints").glob("*.pt"))
            result = train_bundle(
                bundle,
                data_dir=data_dir,
                fold=fold,
                epochs=epochs,
                resume=resume,
                output_dir=folder,
                progress=progress,
                max_minutes=max_minutes,
                start_time=start,
                precision=precision,
            )
            trained = {"epochs": result["epochs"], "minutes": round((time.time() - start) / 60, 1)}
        oof = predict_oof(bundle, weights, fold, folder / "oof", data_dir, device)
        member = {**oof, **trained}
        atomic_write_json(record, member)
        _drop_checkpoints(folder)
        logger.info("member of fold %d: mean Dice %.4f on its fold", fold, member["mean_dice"])
    return write_summary(bundle, data_dir)


def _drop_checkpoints(folder: Path) -> None:
    """Delete a done member's epoch checkpoints: they only serve to resume it (weights, optimizer and
    EMA state, tens of MB each for a 3-D network), and a done member is never resumed."""
    import shutil

    shutil.rmtree(folder / "checkpoints", ignore_errors=True)


def _finished_run(folder: Path) -> dict[str, Any]:
    """Epochs and wall minutes of a finished member's run, from its ``log.csv`` (file times)."""
    log = folder / "log.csv"
    if not log.is_file():
        raise BundleError(f"{folder} has weights but no log.csv of the run that made them; train it again")
    rows = [line for line in log.read_text().splitlines()[1:] if line.strip()]
    # TensorBoard names its event file after the run's start: events.out.tfevents.<unix time>.<host>...
    starts = [float(p.name.split(".")[3]) for p in folder.glob("tensorboard/events.out.tfevents.*")]
    minutes = round((log.stat().st_mtime - min(starts)) / 60, 1) if starts else None
    return {"epochs": len(rows), "minutes": minutes}


def write_summary(bundle: Bundle, data_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Summarize every finished member of the bundle into ``plans/cv.json``."""
    members = {}
    for fold in cv_folds():
        path = member_dir(bundle, fold) / "member.json"
        if path.is_file():
            members[fold] = json.loads(path.read_text())
    if not members:
        raise BundleError(f"bundle {bundle.name} has no finished cross-validation member under cv/")
    summary = summarize(bundle, members)
    if sorted(members) == cv_folds():
        summary["postprocessing"] = _learn(bundle, members, data_dir)
    atomic_write_json(bundle.root / CV_RECORD, summary)
    _rerender(bundle, summary)
    return summary


def _learn(
    bundle: Bundle, members: Mapping[int, Mapping[str, Any]], data_dir: str | os.PathLike | None
) -> dict[str, Any]:
    """nnU-Net's connected-component steps decided on this configuration's out-of-fold predictions."""
    from medseg.bundle.loader import load_inference
    from medseg.data import split_folds
    from medseg.data.dataset import load_datalist
    from medseg.ensemble.postprocessing import learn_postprocessing

    inference = load_inference(bundle, "cpu", weights=member_weights(bundle, cv_folds()[0]))
    datalist = load_datalist(_dataset_dir(inference, data_dir))
    cases = []
    for fold in members:
        for item in split_folds(datalist, fold):
            pred = load_oof(bundle, item["case_id"], fold).argmax(0).astype(np.uint8)
            cases.append((pred, load_reference(inference, item["label"])))
    return learn_postprocessing(cases, bundle.labels)


def _rerender(bundle: Bundle, cv: Mapping[str, Any]) -> None:
    """Render a planned bundle again, so its README shows the CV table and its configs the steps."""
    from medseg.render import render_bundle

    if (bundle.root / PLAN_FILE).is_file():
        render_bundle(read_plan(bundle.root), bundle.root, record=read_record(bundle.root), cv=cv)
