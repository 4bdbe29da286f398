"""Weights versions of a served bundle and the rule that decides which one serves.

Why: ``POST /train/{model}`` fine-tunes on whatever labels clinicians submitted. A bad batch of
labels (or a bad learning rate) gives a worse model, and stock MONAI Label would serve it at once.
Here a fine-tuned version is *published* (a new weights file) but only *promoted* to serving when,
on labelled images held out from its fine-tuning, its mean Dice is not below the serving
version's; otherwise it stays a candidate that an admin may still promote by hand.

State, all inside the served bundle copy (``WORKDIR/app/model/<bundle>/models/``)::

    model.pt                     the shipped weights (never written)
    model-ftNNN-<time>.pt        fine-tuned versions
    versions.jsonl               one record per published version (scores, decision)
    serving.json                 the serving version and the stack of earlier ones (for rollback)
    serving-log.jsonl            every change of the serving version (who, when, why)
    validation.json              the recorded validation part of the datastore's labels

The validation part is chosen deterministically and never shrinks: image ids are ranked by the
SHA-256 of their id, about one in five labelled images (at least one once three are labelled) is
held out, an image once held out stays held out, and images of the bundle's test fold (fold 0 of
its dataset: sorted case ids, index % 5 == 0) are never used for it.

HTTP routes (see :func:`make_router`): ``GET /model/versions/{model}``,
``POST /model/versions/{model}/promote`` (``{"weights": NAME}``) and
``POST /model/versions/{model}/rollback``; writes need the admin role.

This module imports neither monailabel nor fastapi at import time, so that the core venv can
test the store and the rule.
"""

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MedsegError
from medseg.io.atomic import atomic_write_text

__all__ = [
    "SHIPPED",
    "VERSION_FILE",
    "VersionError",
    "VersionStore",
    "choose_validation",
    "mean_dice",
    "should_promote",
    "bundle_test_fold",
    "make_router",
]

logger = logging.getLogger("medseg.serve.versions")

SHIPPED = "model.pt"
VERSION_FILE = re.compile(r"^model-ft(\d{3,})-(\d{8}T\d{6})\.pt$")
VALIDATION_FRACTION = 0.2
MIN_LABELLED_FOR_VALIDATION = 3  # fewer: everything trains, nothing is promoted automatically


class VersionError(MedsegError):
    """A request about weights versions that cannot be done (unknown version, nothing to roll back)."""


def _hash_rank(image_id: str) -> str:
    return hashlib.sha256(image_id.encode("utf-8")).hexdigest()


def choose_validation(
    labelled: Iterable[str],
    recorded: Sequence[str],
    excluded: Iterable[str] = (),
    fraction: float = VALIDATION_FRACTION,
) -> list[str]:
    """The validation part of the labelled images: the recorded one, grown to ``fraction`` by hash rank.

    Args:
        labelled: ids of the images that have final labels now.
        recorded: the validation ids recorded so far (kept while they are labelled: never moved back
            into fine-tuning, or a later comparison would score a version on its own training data).
        excluded: ids that may never be used for a decision (the bundle's test fold).
        fraction: share of the labelled images to hold out.

    Returns:
        Sorted validation ids; empty while fewer than three eligible images are labelled (two are
        needed to fine-tune).
    """
    excluded = set(excluded)
    labelled = sorted(set(labelled))
    eligible = [i for i in labelled if i not in excluded]
    chosen = [i for i in recorded if i in set(eligible)]
    if len(eligible) < MIN_LABELLED_FOR_VALIDATION:
        return sorted(chosen)
    target = max(1, int(round(fraction * len(eligible))))
    # the fine-tuning part keeps at least two images
    target = min(target, len(labelled) - 2) if len(labelled) > 2 else 0
    for image_id in sorted(eligible, key=_hash_rank):
        if len(chosen) >= target:
            break
        if image_id not in chosen:
            chosen.append(image_id)
    return sorted(chosen)


def mean_dice(pred: np.ndarray, truth: np.ndarray, labels: Iterable[int]) -> float:
    """Mean Dice over the foreground ``labels`` (a label absent from both counts as 1)."""
    scores = []
    for value in labels:
        p, t = pred == value, truth == value
        denom = int(p.sum()) + int(t.sum())
        scores.append(1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom)
    return float(np.mean(scores)) if scores else float("nan")


def should_promote(candidate_dice: float | None, serving_dice: float | None) -> bool:
    """The promotion rule: a candidate serves only if scored and not below the serving version."""
    if candidate_dice is None or serving_dice is None:
        return False
    if not (np.isfinite(candidate_dice) and np.isfinite(serving_dice)):
        return False
    return candidate_dice >= serving_dice


def bundle_test_fold(bundle_path: str | os.PathLike) -> set[str]:
    """Case ids of fold 0 of the bundle's dataset (its test fold): sorted case ids, index % 5 == 0.

    The dataset is the ``datalist`` of the bundle's ``configs/train.json``. When it cannot be
    resolved here (a deployment without the training data), the set is empty and a warning says so.
    """
    try:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(Path(bundle_path) / "configs" / "train.json"))
        parser["bundle_root"] = str(bundle_path)
        datalist = parser.get_parsed_content("datalist")
        ids = sorted({_case_id(item["image"]) for item in datalist})
    except Exception as exc:  # noqa: BLE001 - a bundle without a resolvable dataset (no data here)
        logger.warning(
            "test fold of %s unknown (%s: %s): no image is excluded from validation",
            Path(bundle_path).name,
            type(exc).__name__,
            exc,
        )
        return set()
    return {cid for index, cid in enumerate(ids) if index % 5 == 0}


def _case_id(path: Any) -> str:
    name = os.path.basename(str(path[0] if isinstance(path, (list, tuple)) else path))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class VersionStore:
    """The weights versions of one served bundle copy, and which one serves.

    Args:
        bundle_path: the served bundle folder (``WORKDIR/app/model/<bundle>``).
    """

    def __init__(self, bundle_path: str | os.PathLike) -> None:
        self.bundle_path = Path(bundle_path)
        self.models = self.bundle_path / "models"

    # -- files
    def _lock(self) -> Any:
        """A lock across threads and processes (the server and its training jobs both change versions)."""
        from filelock import FileLock

        return FileLock(str(self.models / ".versions.lock"))

    @property
    def log_path(self) -> Path:
        return self.models / "versions.jsonl"

    @property
    def serving_path(self) -> Path:
        return self.models / "serving.json"

    @property
    def serving_log_path(self) -> Path:
        return self.models / "serving-log.jsonl"

    @property
    def validation_path(self) -> Path:
        return self.models / "validation.json"

    # -- versions
    def fine_tuned(self) -> list[Path]:
        """Fine-tuned weight files, oldest first."""
        found = [
            (int(m.group(1)), p)
            for p in self.models.glob("model-ft*.pt")
            if (m := VERSION_FILE.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def names(self) -> list[str]:
        """Every weights name: the shipped ``model.pt`` and the fine-tuned versions."""
        return [SHIPPED] + [p.name for p in self.fine_tuned()]

    def next_version_path(self) -> Path:
        """File name for the next fine-tuned version."""
        versions = self.fine_tuned()
        number = int(VERSION_FILE.match(versions[-1].name).group(1)) + 1 if versions else 1
        return self.models / f"model-ft{number:03d}-{time.strftime('%Y%m%dT%H%M%S')}.pt"

    def records(self) -> dict[str, dict[str, Any]]:
        """The published records by weights name (the last record of a name wins)."""
        out: dict[str, dict[str, Any]] = {}
        if self.log_path.is_file():
            for line in self.log_path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    out[record["weights"]] = record
        return out

    def add_record(self, record: dict[str, Any]) -> None:
        """Append a published version's record (weights, scores, decision)."""
        with self._lock(), open(self.log_path, "a") as fp:
            fp.write(json.dumps(record) + "\n")

    # -- serving
    def _state(self) -> dict[str, Any]:
        if self.serving_path.is_file():
            state = json.loads(self.serving_path.read_text())
            if isinstance(state.get("stack"), list) and state["stack"]:
                return state
        return {"stack": [SHIPPED]}

    def serving(self) -> str:
        """Name of the serving weights (``model.pt`` until a version is promoted)."""
        name = self._state()["stack"][-1]
        if not (self.models / name).is_file():
            logger.warning(
                "serving weights %s of %s are missing: serving %s", name, self.bundle_path.name, SHIPPED
            )
            return SHIPPED
        return name

    def serving_path_file(self) -> Path:
        """Path of the serving weights file."""
        return self.models / self.serving()

    def _write_state(self, state: dict[str, Any], event: dict[str, Any]) -> None:
        atomic_write_text(self.serving_path, json.dumps(state, indent=2))
        with open(self.serving_log_path, "a") as fp:
            fp.write(json.dumps(event) + "\n")
        logger.info(
            "%s: %s now serves %s (%s)",
            self.bundle_path.name,
            event.get("event"),
            state["stack"][-1],
            event.get("reason", ""),
        )

    def promote(self, name: str, *, by: str = "", reason: str = "") -> dict[str, Any]:
        """Serve ``name`` from now on; the version it replaces can be rolled back to.

        Raises:
            VersionError: ``name`` is not a weights file of this bundle.
        """
        if name not in self.names():
            raise VersionError(
                f"{name!r} is not a weights version of {self.bundle_path.name}; "
                f"choose one of: {', '.join(self.names())}"
            )
        with self._lock():
            state = self._state()
            previous = state["stack"][-1]
            if previous != name:
                state["stack"].append(name)
            event = {
                "event": "promoted",
                "weights": name,
                "previous": previous,
                "by": by,
                "reason": reason,
                "time": _now(),
            }
            self._write_state(state, event)
        return self.summary()

    def rollback(self, *, by: str = "", reason: str = "") -> dict[str, Any]:
        """Serve the version that served before the current one.

        Raises:
            VersionError: nothing was promoted, so there is nothing to go back to.
        """
        with self._lock():
            state = self._state()
            if len(state["stack"]) < 2:
                raise VersionError(
                    f"{self.bundle_path.name} serves {state['stack'][-1]} and no earlier version: nothing to roll back"
                )
            current = state["stack"].pop()
            event = {
                "event": "rolled back",
                "weights": state["stack"][-1],
                "previous": current,
                "by": by,
                "reason": reason,
                "time": _now(),
            }
            self._write_state(state, event)
        return self.summary()

    def summary(self) -> dict[str, Any]:
        """Versions with their scores, and which one serves (what ``GET /model/versions/{model}`` answers)."""
        serving = self.serving()
        records = self.records()
        versions = []
        for name in self.names():
            record = dict(records.get(name, {}))
            record.pop("run_dir", None)  # a server path: not for clients
            status = "serving" if name == serving else ("shipped" if name == SHIPPED else "candidate")
            versions.append(
                {"weights": name, "status": status, **{k: v for k, v in record.items() if k != "weights"}}
            )
        validation = self.validation()
        return {
            "model": self.bundle_path.name,
            "serving": serving,
            "rollback_to": self._state()["stack"][-2] if len(self._state()["stack"]) > 1 else None,
            "versions": versions,
            "validation_images": validation.get("images", []),
        }

    # -- validation part
    def validation(self) -> dict[str, Any]:
        """The recorded validation part (``images``, ``excluded_test_fold``, ``rule``)."""
        if self.validation_path.is_file():
            return json.loads(self.validation_path.read_text())
        return {"images": []}

    def update_validation(self, labelled: Iterable[str], test_fold: Iterable[str]) -> list[str]:
        """Grow the recorded validation part for the images labelled now; returns it."""
        labelled = sorted(set(labelled))
        test_fold = set(test_fold)
        recorded = self.validation().get("images", [])
        chosen = choose_validation(labelled, recorded, test_fold)
        record = {
            "images": chosen,
            "excluded_test_fold": sorted(i for i in labelled if i in test_fold),
            "rule": "ids ranked by sha256(id); about 1 in 5 labelled images held out (at least 1 from 3 on); "
            "held out once, held out for good; never fold 0 of the bundle's dataset",
            "time": _now(),
        }
        atomic_write_text(self.validation_path, json.dumps(record, indent=2))
        return chosen


def make_router(store_of: Any) -> Any:
    """The FastAPI router of ``/model/versions`` (imported in the MONAI Label venv only).

    Args:
        store_of: callable ``model name -> VersionStore``; raises ``KeyError`` for an unknown model.
    """
    from fastapi import APIRouter, Body, Depends, HTTPException
    from monailabel.config import RBAC_ADMIN, RBAC_USER, settings
    from monailabel.endpoints.user.auth import RBAC, User

    router = APIRouter(prefix="/model/versions", tags=["Model versions"])

    def _store(model: str) -> VersionStore:
        try:
            return store_of(model)
        except KeyError as exc:
            raise HTTPException(status_code=404, detail=str(exc.args[0]) if exc.args else model) from None

    @router.get(
        "/{model}", summary=f"{RBAC_USER}Weights versions of a model, their scores and which one serves"
    )
    async def api_versions(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):  # noqa: B008
        return _store(model).summary()

    @router.post("/{model}/promote", summary=f"{RBAC_ADMIN}Serve a weights version (also a candidate)")
    async def api_promote(
        model: str,
        body: dict = Body(...),  # noqa: B008
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),  # noqa: B008
    ):
        name = body.get("weights") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name:
            raise HTTPException(
                status_code=400, detail='the body must name the version: {"weights": "model-ft001-....pt"}'
            )
        try:
            return _store(model).promote(
                name, by=user.username, reason=str(body.get("reason", "promoted by hand"))
            )
        except VersionError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @router.post(
        "/{model}/rollback", summary=f"{RBAC_ADMIN}Serve the version that served before the current one"
    )
    async def api_rollback(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):  # noqa: B008
        try:
            return _store(model).rollback(by=user.username, reason="rolled back by hand")
        except VersionError as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None

    return router
