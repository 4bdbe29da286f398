"""The template of a cross-validation ensemble bundle: :class:`EnsembleTemplate`.

An ensemble bundle (``medseg ensemble choose``) is rendered from what its ``plans/`` records
(:mod:`medseg.render.records`): ``plans/ensemble.json`` (configurations, members, the choice),
each configuration's ``plans/members/<configuration>/plan.json`` and ``cv.json``, and
``plans/training.json``. It is its first configuration's bundle with these differences, each an
overridden method of :class:`~medseg.render.template.BundleTemplate`:

* ``configs/inference.json``: ``network_def`` is :class:`medseg.ensemble.EnsembleNetwork` over
  ``members``, one entry per configuration: its network and sliding window written once, and its
  members' weights files (one per fold); no single checkpoint is loaded.
* ``configs/evaluate.json`` builds that same network from ``configs/inference.json``
  (:func:`medseg.ensemble.network.bundle_network`) instead of repeating it.
* ``configs/train.json`` is the recipe of one member (the training folds other than the test fold
  and its own validation fold; ``medseg train --cv`` trains them all).
* metadata and README describe the members, the choice and the test-fold figures.

Short lists of scalars are written on one line (``[40, 56, 40]``), which keeps the 16-member
hippocampus ensemble's inference.json a page long.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.data.datalist import DEFAULT_NUM_FOLDS
from medseg.render.records import (
    Plan,
    member_plan_dir,
    read_ensemble,
    read_plan,
    read_record,
)
from medseg.render.template import BundleTemplate, cv_section, dice_table, step_lines

__all__ = ["EnsembleTemplate", "compact_dump"]

_INDENT = "    "


_ONE_LINE = 100  # the longest list of scalars written on one line


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _compact(value: Any, level: int) -> str:
    pad, inner = _INDENT * level, _INDENT * (level + 1)
    if isinstance(value, Mapping) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_compact(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    one_line = json.dumps(value)
    if isinstance(value, list) and value and (not all(map(_scalar, value)) or len(one_line) > _ONE_LINE):
        return "[\n" + ",\n".join(inner + _compact(v, level + 1) for v in value) + "\n" + pad + "]"
    return one_line


def compact_dump(payload: Any) -> str:
    """JSON indented by four as :func:`~medseg.render.template.dump`, but a short list of scalars on one line."""
    return _compact(payload, 0) + "\n"


def member_training(training: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration's training as its cross-validation members train: each on the folds other than
    the test fold and its own validation fold, whatever its single model trains on (a plan may train
    that one on all four, ``medseg train --fold all``)."""
    excluded = {int(training["test_fold"]), int(training["val_fold"])}
    return {**training, "train_folds": [k for k in range(DEFAULT_NUM_FOLDS) if k not in excluded]}


class EnsembleTemplate(BundleTemplate):
    """An ensemble bundle's files: the first configuration's template, with the members in the configs.

    Args:
        ensemble: ``plans/ensemble.json`` (name, dataset_folder, configurations, members, choice).
        plans: each configuration's plan, by configuration name.
        cvs: each configuration's cross-validation record (``None`` when absent), for the README.
        record: the ensemble's training record (``plans/training.json``), or None.
    """

    dump = staticmethod(compact_dump)

    def __init__(
        self,
        ensemble: Mapping[str, Any],
        plans: Mapping[str, Plan | Mapping[str, Any]],
        cvs: Mapping[str, Mapping[str, Any] | None],
        record: Mapping[str, Any] | None = None,
    ) -> None:
        self.ensemble = ensemble
        self.choice = ensemble["choice"]
        folder = ensemble.get("dataset_folder") or ""
        self.configurations = {c: BundleTemplate(plans[c], folder) for c in ensemble["configurations"]}
        for template in self.configurations.values():
            template.training = member_training(template.training)
        self.cvs = cvs
        super().__init__(plans[ensemble["configurations"][0]], folder, record)
        self.training = member_training(self.training)
        self.components = self.choice.get("postprocessing")

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike) -> EnsembleTemplate:
        """The template of an ensemble bundle, read from its ``plans/``.

        Raises:
            BundleError: the bundle has no ``plans/ensemble.json`` or a member's plan is missing.
        """
        root = Path(bundle_dir)
        ensemble = read_ensemble(root)
        plans, cvs = {}, {}
        for configuration in ensemble["configurations"]:
            folder = member_plan_dir(root, configuration)
            plans[configuration] = read_plan(root, str(folder.relative_to(root) / "plan.json"))
            cv_file = folder / "cv.json"
            cvs[configuration] = json.loads(cv_file.read_text()) if cv_file.is_file() else None
        return cls(ensemble, plans, cvs, read_record(root))

    # -- the members ------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """One entry per configuration: its network and window once, its members' weights by name."""
        entries = []
        for configuration, template in self.configurations.items():
            weights = {
                f"{m['configuration']} fold {m['fold']}": f"$@bundle_root + '/{m['weights']}'"
                for m in self.ensemble["members"]
                if m["configuration"] == configuration
            }
            entries.append(
                {
                    "group": configuration,
                    "network": template.network,
                    "inferer": {**template.sliding_window(), "roi_size": template.roi},
                    "weights": weights,
                }
            )
        return entries

    def network_def(self) -> dict[str, Any]:
        return {"_target_": "medseg.ensemble.EnsembleNetwork", "members": "@members"}

    # -- overridden parts -------------------------------------------------------------------

    def inference_network(self) -> dict[str, Any]:
        return {
            "members": self.members(),
            "network_def": self.network_def(),
            "network": "$@network_def.to(@device)",
        }

    def inference_inferer(self) -> dict[str, Any]:
        return {"_target_": "SimpleInferer"}  # each member keeps its configuration's window

    def inference_weights(self) -> dict[str, Any]:
        return {"initialize": ["$monai.utils.set_determinism(seed=0)"]}  # the members load their own

    def evaluate(self) -> dict[str, Any]:
        evaluate = super().evaluate()
        del evaluate["checkpointloader"]
        return {
            **evaluate,
            "ensemble_def": {
                "_target_": "medseg.ensemble.network.bundle_network",
                "config_file": "$@bundle_root + '/configs/inference.json'",
                "bundle_root": "@bundle_root",
            },
            "validate#evaluator#network": "$@ensemble_def.to(@device)",
            "validate#inferer": {"_target_": "SimpleInferer"},
            "validate#handlers": [h for h in evaluate["validate#handlers"] if h != "@checkpointloader"],
        }

    def description(self) -> str:
        e = self.ensemble
        return (
            f"A cross-validation ensemble of {len(e['members'])} networks "
            f"({', '.join(e['configurations'])}; one per non-test fold of medseg's fixed split), "
            "chosen and postprocessed by cross-validation on folds 1-4; fold 0 is the test fold. Research "
            "use only, not for diagnosis."
        )

    def metadata(self) -> dict[str, Any]:
        metadata = super().metadata()
        metadata["name"] = self.ensemble["name"]
        metadata["ensemble"] = {
            "members": [
                {k: m[k] for k in ("configuration", "fold", "weights")} for m in self.ensemble["members"]
            ],
            "tta": self.choice.get("tta", {}).get("used", False),
            "postprocessing": {k: self.choice["postprocessing"][k] for k in ("foreground", "classes")},
        }
        return metadata

    def readme(self) -> str:
        e, choice = self.ensemble, self.choice
        names = [self.labels[k] for k in sorted(self.labels) if k != 0]
        candidates = [
            f"| {' + '.join(c['configurations'])} | "
            + " | ".join(f"{c['dice'][n]:.4f}" for n in names)
            + f" | {c['mean_dice']:.4f} |"
            for c in choice["candidates"]
        ]
        members = []
        for configuration in e["configurations"]:
            members += [f"### {configuration}", "", *cv_section(self.cvs.get(configuration), self.labels)[1:]]
        return "\n".join(
            [
                f"# {e['name']}",
                "",
                "**Research use only, not for diagnosis.**",
                "",
                "Generated by `medseg ensemble choose` from `plans/` (do not edit the configs by hand).",
                "",
                "## Members",
                f"{len(e['members'])} networks, one per configuration and non-test fold; each weights "
                "file under `models/`. Their softmax probabilities are averaged "
                "(`medseg.ensemble.EnsembleNetwork`); each member keeps its configuration's sliding window.",
                "",
                "| configuration | fold | weights |",
                "|---|---:|---|",
                *[f"| {m['configuration']} | {m['fold']} | `{m['weights']}` |" for m in e["members"]],
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
                *step_lines(choice["postprocessing"]),
                "",
                f"Test-time augmentation: {'used' if choice['tta']['used'] else 'not used'}: {choice['tta']['why']}.",
                "",
                *members,
                *self.results(),
                "## Commands",
                "```bash",
                "# segment with the whole ensemble, or its first member alone",
                f"medseg segment IMAGE --bundle bundles/{e['name']} --output OUT",
                f"medseg segment IMAGE --bundle bundles/{e['name']} --output OUT --fast",
                "# the test fold through MONAI alone, from this folder",
                "python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir DATASET",
                "```",
                "",
            ]
        )

    def results(self) -> list[str]:
        record = self.record
        if not record:
            return []
        return [
            "## Test fold",
            f"Measured by running this bundle's own `configs/inference.json` on fold 0 "
            f"({record.get('test_cases', '?')} cases) and scoring its outputs against the labels on each "
            "case's original grid:",
            "",
            *dice_table(record.get("dice", {}), record["mean_dice"]),
            "",
            f"Members trained on {record['machine']}: {record['epochs']} epochs each, "
            f"{record['wall_minutes']:.1f} minutes in all.",
            "",
            "```bash",
            record["command"],
            "```",
            "",
        ]


def _candidates_scored(choice: Mapping[str, Any]) -> str:
    largest = max(len(c["configurations"]) for c in choice["candidates"])
    if largest == 1:
        return "each configuration (its members' probabilities averaged)"
    return f"each configuration and each combination of up to {largest} (probabilities averaged)"
