"""Write a cross-validation ensemble as a MONAI bundle, rendered from its recorded choice.

The ensemble bundle is rendered like a planned one, from what ``plans/`` records
(:class:`medseg.render.EnsembleTemplate`), so ``medseg bundle check`` re-renders and compares it:

* ``plans/ensemble.json``: the configurations, the members (one per configuration and fold, with
  its weights file under ``models/``), the cross-validation table that chose them, the learned
  postprocessing and the TTA decision;
* ``plans/members/<configuration>/plan.json`` and ``cv.json``: each configuration's plan and its
  cross-validation record;
* ``plans/training.json``: the version, how the members were trained and the test-fold figures.

What the configs hold is described in :mod:`medseg.render.ensemble`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.bundle.core import Bundle, open_bundle
from medseg.ensemble.cv import cv_folds, member_weights
from medseg.errors import BundleError
from medseg.io.atomic import atomic_copy, atomic_write_json
from medseg.render import EnsembleTemplate, write_files
from medseg.render.records import (
    CV_RECORD,
    ENSEMBLE_RECORD,
    PLAN_FILE,
    RECORD_FILE,
    member_plan_dir,
    read_plan,
)

__all__ = ["write_ensemble"]


def write_ensemble(
    bundles: Sequence[Bundle | str | os.PathLike],
    choice: Mapping[str, Any],
    output: str | os.PathLike,
    name: str | None = None,
    record: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write the chosen configurations' cross-validation members as one ensemble bundle.

    Args:
        bundles: the cross-validated bundles (at least those in ``choice["chosen"]``).
        choice: :func:`medseg.ensemble.choose_configuration`'s result.
        output: the ensemble bundle's folder.
        name: the bundle's name (default the folder's name).
        record: its training record (``plans/training.json``), when its test-fold figures are known.

    Returns:
        the relative paths written.
    """
    opened = {b.name: b for b in (x if isinstance(x, Bundle) else open_bundle(x) for x in bundles)}
    missing = [c for c in choice["chosen"] if c not in opened]
    if missing:
        raise BundleError(f"the choice names {missing[0]}, which is not among the bundles given")
    root = Path(output)
    (root / "models").mkdir(parents=True, exist_ok=True)
    members = []
    written = []
    for configuration in choice["chosen"]:
        bundle = opened[configuration]
        plan_dir = member_plan_dir(root, configuration)
        plan_dir.mkdir(parents=True, exist_ok=True)
        atomic_copy(bundle.root / PLAN_FILE, plan_dir / "plan.json")
        atomic_copy(bundle.root / CV_RECORD, plan_dir / "cv.json")
        for fold in cv_folds():
            weights = f"models/{configuration}_fold{fold}.pt"
            atomic_copy(member_weights(bundle, fold), root / weights)
            members.append({"configuration": configuration, "fold": fold, "weights": weights})
            written.append(weights)
    plan0 = read_plan(opened[choice["chosen"][0]].root)
    ensemble = {
        "name": name or root.resolve().name,
        "dataset_folder": plan0.inputs.get("dataset_folder"),
        "configurations": list(choice["chosen"]),
        "members": members,
        "choice": dict(choice),
    }
    atomic_write_json(root / ENSEMBLE_RECORD, ensemble)
    if record is not None:
        atomic_write_json(root / RECORD_FILE, record)
    files = EnsembleTemplate.from_bundle(root).files()
    write_files(files, root)
    return [*written, *files]
