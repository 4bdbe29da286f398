"""medseg's training task for MONAI Label: fine-tune, publish a version, promote only if no worse
(MONAI Label venv only).

:class:`MedsegTrainTask` runs the bundle's own ``train.json`` with the datastore's labelled images
outside the recorded validation part, writes its checkpoints into a run folder of the served copy
and publishes the result as a new version file (``models/model.pt`` is never overwritten); the
version serves only if its Dice on the validation part is not below the serving version's
(:mod:`medseg.serve.label.versions`). It overrides the protected hooks ``_partition_datalist`` and
``_update_overrides`` of monailabel 0.8.5's ``BundleTrainTask``: re-check them on an upgrade.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.train.bundle import BundleTrainTask

from medseg.io.atomic import atomic_copy
from medseg.serve.label.infer import LATEST, MedsegInferTask, resolve_weights, weight_versions
from medseg.serve.label.versions import VersionStore, bundle_test_fold, mean_dice, should_promote

__all__ = ["MedsegTrainTask"]

logger = logging.getLogger("medseg.serve.label.app")


def _image_id(path: str) -> str:
    name = os.path.basename(str(path))
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class MedsegTrainTask(BundleTrainTask):
    """Fine-tune with the bundle's train.json on the labels outside the validation part; publish the
    result as a new weights version and promote it only if it scores no worse than the serving one.

    Request options beyond the stock ones: ``learning_rate`` (overrides the bundle's, when it has one).
    """

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, load_strict=True)
        self._conf = dict(conf)
        self._run_dir: Path | None = None
        self._request: dict[str, Any] = {}
        self._validation: list[str] = []
        self.versions = VersionStore(path)

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["model_filename"] = [LATEST, "model.pt"] + [
            p.name for p in reversed(weight_versions(self.bundle_path))
        ]
        config["max_epochs"] = 10
        config["multi_gpu"] = False
        return config

    def _partition_datalist(self, datalist, request, shuffle=False):
        """Fine-tune on the labelled images outside the recorded validation part.

        The bundle's own validation (which decides when it saves weights) runs on the last
        fine-tuning image: the validation part stays unseen until the promotion decision.
        """
        held_out = set(self._validation)
        train = [d for d in datalist if _image_id(d["image"]) not in held_out]
        return train, train[-1:]

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        assert self._run_dir is not None
        overrides["ckpt_dir"] = str(self._run_dir / "ckpt")
        overrides["output_dir"] = str(self._run_dir)
        overrides["resume"] = False
        overrides["progress"] = False
        max_epochs = int(overrides.get(self.const.key_train_trainer_max_epochs(), 1))
        if isinstance(self.bundle_config.get("max_epochs"), int):
            overrides["max_epochs"] = max_epochs  # schedules built on the bundle's max_epochs fit this run
        val_interval = self.bundle_config.get("val_interval")
        if isinstance(val_interval, int):
            # the bundle saves its weights when it validates: validate at least at the last epoch
            overrides["val_interval"] = max(1, min(val_interval, max_epochs))
        learning_rate = self._request.get("learning_rate")
        if learning_rate is not None and "learning_rate" in self.bundle_config:
            overrides["learning_rate"] = float(learning_rate)
        return overrides

    def _score(self, weights: str, items: list[dict[str, str]]) -> float:
        """Mean Dice of ``weights`` over the validation items (image and label files)."""
        from medseg.io.image import read_image

        task = MedsegInferTask(self.bundle_path, self._conf)
        foreground = [v for v in task.label_names if v != 0]
        device = "cuda" if torch.cuda.is_available() else "cpu"
        scores = []
        for item in items:
            result_file, _ = task({"image": item["image"], "model_filename": weights, "device": device})
            try:
                pred, _ = read_image(result_file)
            finally:
                if result_file and os.path.exists(result_file):
                    os.unlink(result_file)
            truth, _ = read_image(item["label"])
            pred = np.rint(np.squeeze(np.asarray(pred))).astype(int)
            truth = np.rint(np.squeeze(np.asarray(truth))).astype(int)
            scores.append(mean_dice(pred, truth, foreground))
        return float(np.mean(scores))

    def _decide(self, candidate: str, items: list[dict[str, str]]) -> dict[str, Any]:
        """Score the candidate and the serving version on the validation part; promote or keep."""
        serving = self.versions.serving()
        if not items:
            return {
                "decision": "kept as candidate",
                "reason": "no validation images (at least 3 labelled images outside the test fold are needed): "
                "promote it by hand after checking it",
                "serving_weights": serving,
            }
        candidate_dice = self._score(candidate, items)
        serving_dice = self._score(serving, items)
        promote = should_promote(candidate_dice, serving_dice)
        reason = (
            f"Dice {candidate_dice:.4f} {'>=' if promote else '<'} {serving_dice:.4f} of {serving} "
            f"on {len(items)} validation images"
        )
        return {
            "decision": "promoted" if promote else "kept as candidate",
            "reason": reason,
            "dice": round(candidate_dice, 6),
            "serving_weights": serving,
            "serving_dice": round(serving_dice, 6),
        }

    def __call__(self, request, datastore):
        request = dict(request)
        self._request = request
        start = resolve_weights(self.bundle_path, request.get("model_filename"))
        request["model_filename"] = start.name
        request.setdefault("device", "cuda" if torch.cuda.is_available() else "cpu")
        request["multi_gpu"] = False
        stamp = time.strftime("%Y%m%dT%H%M%S")
        self._run_dir = Path(self.bundle_path) / "runs" / f"finetune-{stamp}"
        (self._run_dir / "ckpt").mkdir(parents=True, exist_ok=True)
        datalist = datastore.datalist()
        by_id = {_image_id(d["image"]): d for d in datalist}
        self._validation = self.versions.update_validation(by_id, bundle_test_fold(self.bundle_path))
        fine_tune = len(datalist) - len(self._validation)
        if fine_tune < 2:
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"training needs at least 2 labelled images to fine-tune on, the datastore has {len(datalist)} "
                f"({len(self._validation)} held out for validation)",
            )
        logger.info(
            "fine-tuning %s from %s on %d images; validation part (held out): %s",
            os.path.basename(self.bundle_path),
            start.name,
            fine_tune,
            ", ".join(self._validation) or "none",
        )
        super().__call__(request, datastore)
        best = self._run_dir / "ckpt" / "model.pt"
        if not best.is_file():
            raise MONAILabelException(
                MONAILabelError.APP_TRAIN_FAILED, f"training ended without saving weights in {best.parent}"
            )
        dest = self.versions.next_version_path()
        atomic_copy(best, dest)
        logger.info("published fine-tuned weights %s", dest)
        decision = self._decide(dest.name, [by_id[i] for i in self._validation])
        record = {
            "weights": dest.name,
            "started_from": start.name,
            "max_epochs": request.get("max_epochs"),
            "learning_rate": request.get("learning_rate"),
            "labelled_images": len(datalist),
            "fine_tuned_on": fine_tune,
            "validation_images": list(self._validation),
            **decision,
            "run_dir": str(self._run_dir),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.versions.add_record(record)
        logger.info("%s: %s (%s)", dest.name, decision["decision"], decision["reason"])
        if decision["decision"] == "promoted":
            self.versions.promote(dest.name, by="training", reason=decision["reason"])
        return {k: v for k, v in record.items() if k != "run_dir"}
