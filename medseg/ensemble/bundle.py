"""Write a cross-validation ensemble as a MONAI bundle, rendered from its recorded choice.

The ensemble bundle is rendered like a planned one (:mod:`medseg.plan.render`), from what
``plans/`` records, so ``medseg bundle check`` re-renders and compares it:

* ``plans/ensemble.json``: the configurations, the members (one per configuration and fold, with
  its weights file under ``models/``), the cross-validation table that chose them, the learned
  postprocessing and the TTA decision;
* ``plans/members/<configuration>/plan.json`` and ``cv.json``: each configuration's plan and its
  cross-validation record;
* ``plans/training.json``: the version, how the members were trained and the test-fold figures.

``configs/inference.json`` is the first configuration's, with :class:`medseg.ensemble.EnsembleNetwork`
as ``network_def`` (each member inside it keeps its configuration's sliding window) and the learned
:class:`medseg.postprocess.LargestComponentsd` after the argmax; ``configs/train.json`` is the first
configuration's recipe (it trains one member: folds 2-4, fold 1 monitors; ``medseg train --cv``
trains them all), and ``evaluate.json`` evaluates the whole ensemble.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg.bundle.core import Bundle, open_bundle
from medseg.ensemble.cv import CV_RECORD, cv_folds, member_weights
from medseg.errors import BundleError
from medseg.io.atomic import atomic_copy, atomic_write_json, atomic_write_text
from medseg.plan import render

__all__ = ["ENSEMBLE_RECORD", "render_ensemble_files", "write_ensemble"]

ENSEMBLE_RECORD = "plans/ensemble.json"


def _member_plan_path(root: Path, configuration: str) -> Path:
    return root / "plans" / "members" / configuration / "plan.json"


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
        plan_dir = _member_plan_path(root, configuration).parent
        plan_dir.mkdir(parents=True, exist_ok=True)
        atomic_copy(bundle.root / "plans" / "plan.json", plan_dir / "plan.json")
        atomic_copy(bundle.root / CV_RECORD, plan_dir / "cv.json")
        for fold in cv_folds():
            weights = f"models/{configuration}_fold{fold}.pt"
            atomic_copy(member_weights(bundle, fold), root / weights)
            members.append({"configuration": configuration, "fold": fold, "weights": weights})
            written.append(weights)
    plan0 = json.loads((opened[choice["chosen"][0]].root / "plans" / "plan.json").read_text())
    ensemble = {
        "name": name or root.resolve().name,
        "dataset_folder": plan0["inputs"].get("dataset_folder"),
        "configurations": list(choice["chosen"]),
        "members": members,
        "choice": dict(choice),
    }
    atomic_write_json(root / ENSEMBLE_RECORD, ensemble)
    if record is not None:
        atomic_write_json(root / render.RECORD_FILE, record)
    for relative, text in render_ensemble_files(root).items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
        written.append(relative)
    return written


def _recipe(root: Path, configuration: str, folder: str) -> render._Recipe:
    """A configuration's recipe as its cross-validation members train: each on the folds other than the
    test fold and its own validation fold, whatever the configuration's single model trains on (a plan
    may train that one on all four, ``medseg train --fold all``)."""
    from medseg.bundle.train import fold_overrides

    plan = json.loads(_member_plan_path(root, configuration).read_text())
    r = render._Recipe(plan, folder)
    t = r.training
    r.training = {**t, **fold_overrides(int(t["val_fold"]), int(t["test_fold"]))}
    return r


def _members_config(root: Path, ensemble: Mapping[str, Any], folder: str) -> list[dict[str, Any]]:
    recipes = {c: _recipe(root, c, folder) for c in ensemble["configurations"]}
    members = []
    for member in ensemble["members"]:
        r = recipes[member["configuration"]]
        inferer = {**r.sliding_window(), "roi_size": r.roi}
        members.append(
            {
                "name": f"{member['configuration']} fold {member['fold']}",
                "group": member["configuration"],
                "network": r.network,
                "weights": f"$@bundle_root + '/{member['weights']}'",
                "inferer": inferer,
            }
        )
    return members


def render_ensemble_files(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """Every generated file of an ensemble bundle, from its ``plans/``; deterministic."""
    root = Path(bundle_dir)
    path = root / ENSEMBLE_RECORD
    if not path.is_file():
        raise BundleError(f"{root} has no {ENSEMBLE_RECORD}; write it with medseg ensemble choose")
    ensemble = json.loads(path.read_text())
    record = render.read_record(root)
    folder = ensemble.get("dataset_folder") or ""
    first = ensemble["configurations"][0]
    r = _recipe(root, first, folder)
    choice = ensemble["choice"]
    r.components = choice.get("postprocessing")
    members = _members_config(root, ensemble, folder)
    network_def = {"_target_": "medseg.ensemble.EnsembleNetwork", "members": "@members"}

    inference = render._inference(r)
    inference["members"] = members
    inference["network_def"] = network_def
    inference["inferer"] = {"_target_": "SimpleInferer"}
    inference.pop("checkpointloader")
    inference["initialize"] = ["$monai.utils.set_determinism(seed=0)"]

    evaluate = render._evaluate(r)
    evaluate.pop("checkpointloader")
    evaluate["members"] = members
    evaluate["ensemble_def"] = network_def
    evaluate["validate#evaluator#network"] = "$@ensemble_def.to(@device)"
    evaluate["validate#inferer"] = {"_target_": "SimpleInferer"}
    evaluate["validate#handlers"] = [h for h in evaluate["validate#handlers"] if h != "@checkpointloader"]

    metadata = render._metadata(r, record)
    metadata["name"] = ensemble["name"]
    metadata["description"] = (
        f"A cross-validation ensemble of {len(ensemble['members'])} networks "
        f"({', '.join(ensemble['configurations'])}; one per non-test fold of medseg's fixed split), "
        "chosen and postprocessed by cross-validation on folds 1-4; fold 0 is the test fold. Research "
        "use only, not for diagnosis."
    )
    metadata["ensemble"] = {
        "members": [{k: m[k] for k in ("configuration", "fold", "weights")} for m in ensemble["members"]],
        "tta": choice.get("tta", {}).get("used", False),
        "postprocessing": {k: choice["postprocessing"][k] for k in ("foreground", "classes")},
    }
    files = {
        "configs/train.json": render._dump(render._train(r)),
        "configs/evaluate.json": render._dump(evaluate),
        "configs/inference.json": render._dump(inference),
        "configs/multi_gpu_train.json": render._dump(render._multi_gpu(r)),
        "configs/logging.conf": render._LOGGING_CONF,
        "configs/metadata.json": render._dump(metadata),
        "docs/README.md": _readme(root, ensemble, record, r),
        "LICENSE": render._license(r),
    }
    return files


def _candidates_scored(choice: Mapping[str, Any]) -> str:
    largest = max(len(c["configurations"]) for c in choice["candidates"])
    if largest == 1:
        return "each configuration (its members' probabilities averaged)"
    return f"each configuration and each combination of up to {largest} (probabilities averaged)"


def _readme(root: Path, ensemble: Mapping[str, Any], record: Mapping[str, Any] | None, r: Any) -> str:
    choice = ensemble["choice"]
    names = [r.labels[k] for k in sorted(r.labels) if k != 0]
    candidates = [
        "| "
        + " + ".join(c["configurations"])
        + " | "
        + " | ".join(f"{c['dice'][n]:.4f}" for n in names)
        + f" | {c['mean_dice']:.4f} |"
        for c in choice["candidates"]
    ]
    member_sections = []
    for configuration in ensemble["configurations"]:
        cv_file = _member_plan_path(root, configuration).parent / "cv.json"
        cv = json.loads(cv_file.read_text()) if cv_file.is_file() else None
        member_sections += [f"### {configuration}", "", *render.cv_section(cv, r.labels)[1:]]
    post = choice["postprocessing"]
    steps = render.step_lines(post)
    results = []
    if record:
        dice = record.get("dice", {})
        results = [
            "## Test fold",
            f"Measured by running this bundle's own `configs/inference.json` on fold 0 "
            f"({record.get('test_cases', '?')} cases) and scoring its outputs against the labels on each "
            "case's original grid:",
            "",
            *render.dice_table(dice, record["mean_dice"]),
            "",
            f"Members trained on {record['machine']}: {record['epochs']} epochs each, "
            f"{record['wall_minutes']:.1f} minutes in all.",
            "",
            "```bash",
            record["command"],
            "```",
            "",
        ]
    return "\n".join(
        [
            f"# {ensemble['name']}",
            "",
            "**Research use only, not for diagnosis.**",
            "",
            "Generated by `medseg ensemble choose` from `plans/` (do not edit the configs by hand).",
            "",
            "## Members",
            f"{len(ensemble['members'])} networks, one per configuration and non-test fold; each weights "
            "file under `models/`. Their softmax probabilities are averaged "
            "(`medseg.ensemble.EnsembleNetwork`); each member keeps its configuration's sliding window.",
            "",
            "| configuration | fold | weights |",
            "|---|---:|---|",
            *[f"| {m['configuration']} | {m['fold']} | `{m['weights']}` |" for m in ensemble["members"]],
            "",
            "## Choice by cross-validation (folds 1-4; fold 0 never seen)",
            f"Mean Dice over the {choice['cases']} out-of-fold cases, {_candidates_scored(choice)}, best first:",
            "",
            "| configurations | " + " | ".join(names) + " | mean |",
            "|---|" + "---:|" * (len(names) + 1),
            *candidates,
            "",
            "Postprocessing learned on the chosen configuration's out-of-fold predictions (nnU-Net's rule: "
            "kept when the mean Dice rises and no class falls):",
            "",
            *steps,
            "",
            f"Test-time augmentation: {'used' if choice['tta']['used'] else 'not used'}: {choice['tta']['why']}.",
            "",
            *member_sections,
            *results,
            "## Commands",
            "```bash",
            "# segment with the whole ensemble, or its first member alone",
            f"medseg segment IMAGE --bundle bundles/{ensemble['name']} --output OUT",
            f"medseg segment IMAGE --bundle bundles/{ensemble['name']} --output OUT --fast",
            "# the test fold through MONAI alone, from this folder",
            "python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir DATASET",
            "```",
            "",
        ]
    )
