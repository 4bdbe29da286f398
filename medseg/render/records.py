"""The ``plans/`` folder of a generated bundle: every file name, its reader, and the typed :class:`Plan`.

A generated bundle is rendered from what ``plans/`` records and from nothing else (no data, no
timing), so that ``medseg bundle check`` can re-render it. The names of those files and the way
they are read live here only, as nnU-Net's ``PlansManager`` is the one reader of its plans:

* ``plans/plan.json``: the plan (:class:`Plan`: each value with the rule that chose it and the data
  behind it), written by ``medseg plan``;
* ``plans/fingerprint.json`` and ``plans/overrides.json``: the dataset fingerprint and the
  deliberate choices that differ from the rules;
* ``plans/training.json``: the bundle's own training run and its test-fold figures;
* ``plans/cv.json``: the cross-validation members and their out-of-fold Dice;
* ``plans/ensemble.json`` and ``plans/members/<configuration>/``: an ensemble's chosen members and
  each configuration's plan and cross-validation record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import BundleError

__all__ = [
    "CV_RECORD",
    "ENSEMBLE_RECORD",
    "FINGERPRINT_FILE",
    "OVERRIDES_FILE",
    "PLAN_FILE",
    "RECORD_FILE",
    "Plan",
    "generated_from",
    "installed_versions",
    "member_plan_dir",
    "read_cv",
    "read_ensemble",
    "read_plan",
    "read_record",
]

PLAN_FILE = "plans/plan.json"
FINGERPRINT_FILE = "plans/fingerprint.json"
OVERRIDES_FILE = "plans/overrides.json"  # kept across re-planning: {"augmentation.mirror_axes": [0], ...}
CV_RECORD = "plans/cv.json"
ENSEMBLE_RECORD = "plans/ensemble.json"
# What the bundle's own training run gave: metadata.json's version, changelog and eval_metrics and
# the README's results come from it, so that a trained bundle still re-renders exactly. Its fields:
# {"version": "0.4.0", "changelog": {version: text}, "command": str, "epochs": int,
#  "wall_minutes": float, "machine": str, "test_cases": int, "dice": {label name: float},
#  "mean_dice": float, "eval_metrics": {name: float}}
RECORD_FILE = "plans/training.json"
_RECORD_FIELDS = ("version", "changelog", "command", "epochs", "wall_minutes", "machine", "eval_metrics")


@dataclass(frozen=True)
class Plan:
    """A plan (``plans/plan.json``) with typed access: each planned value, its rule and its data.

    Args:
        inputs: what the plan was made from (dataset, dims, name, versions, ...).
        entries: ``{name: {"value", "rule", "data"?}}`` as planned (overrides applied).
        header: the other top-level fields (``plan_version``, ``medseg_version``).
    """

    inputs: Mapping[str, Any]
    entries: Mapping[str, Mapping[str, Any]]
    header: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, plan: Plan | Mapping[str, Any]) -> Plan:
        """The typed view of a plan given as a :class:`Plan` or as ``plans/plan.json``'s mapping."""
        if isinstance(plan, Plan):
            return plan
        header = {k: v for k, v in plan.items() if k not in ("inputs", "values")}
        return cls(inputs=plan["inputs"], entries=plan["values"], header=header)

    def __getitem__(self, name: str) -> Any:
        """The planned value ``name`` (``plan["patch_size"]``)."""
        return self.entries[name]["value"]

    def rule(self, name: str) -> str:
        """Why ``name`` has its value, in words."""
        return str(self.entries[name]["rule"])

    def data(self, name: str) -> Mapping[str, Any]:
        """What the rule for ``name`` computed on the way (``{}`` when it recorded nothing)."""
        return self.entries[name].get("data") or {}

    @property
    def values(self) -> dict[str, Any]:
        """Every planned value by name."""
        return {name: entry["value"] for name, entry in self.entries.items()}

    @property
    def dataset(self) -> Mapping[str, Any]:
        """The dataset's description (name, labels, channels, layout, file ending, ...)."""
        return self.inputs["dataset"]

    @property
    def versions(self) -> dict[str, str]:
        """The package versions recorded with the plan (an older plan: the installed ones)."""
        return dict(self.inputs.get("versions") or installed_versions())

    def to_dict(self) -> dict[str, Any]:
        """The plan as ``plans/plan.json`` holds it."""
        return {**self.header, "inputs": dict(self.inputs), "values": dict(self.entries)}


def installed_versions() -> dict[str, str]:
    """The installed versions the bundle's metadata.json names, recorded so re-rendering is exact."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("monai", "torch", "numpy", "pytorch-ignite", "nibabel", "tensorboard", "medseg"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def _read_json(path: Path, fix: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); {fix}") from exc


def read_plan(bundle_dir: str | os.PathLike, relative: str = PLAN_FILE) -> Plan:
    """A bundle's plan.

    Args:
        bundle_dir: the bundle folder.
        relative: the plan file inside it (an ensemble's member plan, see :func:`member_plan_dir`).

    Raises:
        BundleError: the bundle has no such plan or it is not JSON.
    """
    path = Path(bundle_dir) / relative
    if not path.is_file():
        raise BundleError(f"{path.parent.parent} has no {relative}; it was not generated by medseg plan")
    return Plan.of(_read_json(path, "re-plan the bundle with medseg plan"))


def read_record(bundle_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A bundle's training record (:data:`RECORD_FILE`), or None when it has none.

    Raises:
        BundleError: the record is not JSON or lacks a field the rendering needs.
    """
    path = Path(bundle_dir) / RECORD_FILE
    if not path.is_file():
        return None
    record = _read_json(path, "fix or remove it")
    missing = [k for k in _RECORD_FIELDS if not isinstance(record, dict) or k not in record]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}; record the training run's {missing[0]}")
    return record


def read_cv(bundle_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A bundle's cross-validation record (:data:`CV_RECORD`), or None."""
    path = Path(bundle_dir) / CV_RECORD
    if not path.is_file():
        return None
    return _read_json(path, "remove it and rerun medseg train --cv")


def read_ensemble(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """An ensemble bundle's record (:data:`ENSEMBLE_RECORD`): configurations, members and the choice.

    Raises:
        BundleError: the bundle has no ensemble record, or it is not JSON.
    """
    path = Path(bundle_dir) / ENSEMBLE_RECORD
    if not path.is_file():
        raise BundleError(f"{bundle_dir} has no {ENSEMBLE_RECORD}; write it with medseg ensemble choose")
    return _read_json(path, "write it again with medseg ensemble choose")


def member_plan_dir(bundle_dir: str | os.PathLike, configuration: str) -> Path:
    """Where an ensemble keeps one configuration's ``plan.json`` and ``cv.json``."""
    return Path(bundle_dir) / "plans" / "members" / configuration


def generated_from(bundle_dir: str | os.PathLike) -> str | None:
    """The record a generated bundle is rendered from (:data:`ENSEMBLE_RECORD` for an ensemble, else
    :data:`PLAN_FILE`), or None for a bundle that was not generated."""
    root = Path(bundle_dir)
    for relative in (ENSEMBLE_RECORD, PLAN_FILE):
        if (root / relative).is_file():
            return relative
    return None
