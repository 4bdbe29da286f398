"""The template of an interactive (click-guided) bundle: :class:`InteractiveTemplate`.

``medseg plan DATASET --interactive`` records ``inputs.interactive`` in ``plans/plan.json``; the
bundle is the planned bundle with DeepEdit's inputs and training (Diaz-Pinto et al., MONAI Label,
2022), each difference an overridden method of :class:`~medseg.render.template.BundleTemplate`:

* the network reads the image and one guidance channel per label name, the labels then
  ``background`` (``label_names``); a click is a gaussian blob in its label's channel;
* training draws an initial click per label on a random slice of the patch
  (``FindAllValidSlicesMissingLabelsd``, ``AddInitialSeedPointMissingLabelsd``) and, at each step,
  MONAI's ``Interaction`` either zeroes every guidance channel (automatic mode, so that without
  clicks the bundle segments on its own) or runs the network and adds clicks where it is wrong
  (``FindDiscrepancyRegionsDeepEditd``, ``AddRandomGuidanceDeepEditd``), up to
  ``max_interactions`` times, before the step that learns. One volume per step: ``Interaction``
  zeroes the guidance of a batch's first item only;
* validation, evaluation and inference append the guidance channels with
  :class:`medseg.interactive.AddClickGuidanced` (clicks in the stored image's voxel indices,
  none: zero channels), so ``medseg evaluate`` without ``--clicks`` and ``medseg segment`` measure
  and run the automatic mode;
* ``warm_start`` (``medseg train --warm-start``): the weights of a plain bundle of the same network,
  the guidance channels' input weights starting at zero;
* ``metadata.json`` declares ``interactive`` (label names, sigma), which ``medseg evaluate --clicks``
  and ``medseg serve`` (a ``deepedit`` infer task) look for; the README adds the click table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medseg.interactive.guidance import guidance_label_names
from medseg.render.records import Plan
from medseg.render.template import BundleTemplate

__all__ = ["DEEPEDIT", "InteractiveTemplate", "is_interactive_plan", "planned_template"]

DEEPEDIT = "monai.apps.deepedit.transforms."
# DeepEdit's training settings (MONAI Label's deepedit config), kept small for CPU steps.
DEEPGROW_PROBABILITY = 0.5
MAX_INTERACTIONS = 3
SIGMA = 3


def is_interactive_plan(plan: Plan | Mapping[str, Any]) -> bool:
    """Whether a plan asks for an interactive bundle (``inputs.interactive``)."""
    return bool(Plan.of(plan).inputs.get("interactive"))


def planned_template(plan: Plan | Mapping[str, Any]) -> type[BundleTemplate]:
    """The template a planned bundle renders with: interactive or plain."""
    return InteractiveTemplate if is_interactive_plan(plan) else BundleTemplate


class InteractiveTemplate(BundleTemplate):
    """A DeepEdit-style bundle's files; arguments as :class:`BundleTemplate`."""

    def __init__(self, plan: Plan | Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        super().__init__(plan, *args, **kwargs)
        self.label_names = guidance_label_names(self.labels)
        self.network = {**self.network, "in_channels": len(self.channels) + len(self.label_names)}
        self.cpu_padding = False  # one volume per step (see the module's note)

    def guidance(self) -> dict[str, Any]:
        """The transform appending the guidance channels (zero without clicks)."""
        return {"_target_": "medseg.interactive.AddClickGuidanced", "keys": "image",
                "label_names": "@label_names", "sigma": "@guidance_sigma",
                "number_intensity_ch": len(self.channels)}  # fmt: skip

    def signal(self) -> dict[str, Any]:
        return {"_target_": DEEPEDIT + "AddGuidanceSignalDeepEditd", "keys": "image", "guidance": "guidance",
                "sigma": "@guidance_sigma", "number_intensity_ch": len(self.channels)}  # fmt: skip

    def random(self) -> list[dict[str, Any]]:
        """The planned random transforms, then an initial click per label drawn on the patch."""
        keys = ["image", "label"]
        return [
            *super().random(),
            {"_target_": "ToNumpyd", "keys": keys},
            # added here, not in the datalist: loading writes the label's metadata into "label_names"
            {"_target_": "Lambda", "func": "$lambda d: dict(d, label_names=dict(@label_names))"},
            {"_target_": DEEPEDIT + "FindAllValidSlicesMissingLabelsd", "keys": "label", "sids": "sids"},
            {
                "_target_": DEEPEDIT + "AddInitialSeedPointMissingLabelsd",
                "keys": "label",
                "guidance": "guidance",
                "sids": "sids",
            },  # fmt: skip
            self.signal(),
            {"_target_": "EnsureTyped", "keys": keys, "dtype": ["$torch.float32", "$torch.uint8"]},
            {"_target_": "SelectItemsd", "keys": [*keys, "label_names", "guidance"]},
        ]

    def click_transforms(self) -> dict[str, Any]:
        """What ``Interaction`` runs after each simulated prediction: clicks where it is wrong."""
        return {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "ToNumpyd", "keys": ["image", "label", "pred"]},
                {
                    "_target_": DEEPEDIT + "FindDiscrepancyRegionsDeepEditd",
                    "keys": "label",
                    "pred": "pred",
                    "discrepancy": "discrepancy",
                },  # fmt: skip
                {
                    "_target_": DEEPEDIT + "AddRandomGuidanceDeepEditd",
                    "keys": "NA",
                    "guidance": "guidance",
                    "discrepancy": "discrepancy",
                    "probability": "probability",
                },  # fmt: skip
                {"_target_": "medseg.interactive.GuidanceToJSONd", "guidance": "guidance"},
                self.signal(),
                {
                    "_target_": "EnsureTyped",
                    "keys": ["image", "label"],
                    "dtype": ["$torch.float32", "$torch.uint8"],
                },
            ],
        }

    def schedule(self) -> dict[str, Any]:
        """The planned schedule, one volume per step, and DeepEdit's settings."""
        return {
            **super().schedule(),
            "batch_size": 1,
            "label_names": self.label_names,
            "guidance_sigma": SIGMA,
            "deepgrow_probability": DEEPGROW_PROBABILITY,
            "max_interactions": MAX_INTERACTIONS,
        }

    def train_section(self) -> dict[str, Any]:
        """The planned training, with MONAI's ``Interaction`` as the trainer's iteration."""
        section = super().train_section()
        section["click_transforms"] = self.click_transforms()
        section["interaction"] = {
            "_target_": "monai.apps.deepedit.interaction.Interaction",
            "deepgrow_probability": "@deepgrow_probability",
            "transforms": "@train#click_transforms",
            "train": True,
            "label_names": "@label_names",
            "click_probability_key": "probability",
            "max_interactions": "@max_interactions",
        }
        section["trainer"] = {**section["trainer"], "iteration_update": "@train#interaction"}
        return section

    def train(self) -> dict[str, Any]:
        """``configs/train.json``, with an optional warm start from a plain bundle's weights."""
        config = super().train()
        config["warm_start"] = None
        config["imports"] = [*config["imports"], "$import medseg.interactive"]
        config["initialize"].insert(1, "$medseg.interactive.warm_start(@network, @warm_start)")
        return config

    def validate_section(self) -> dict[str, Any]:
        """Validation in automatic mode: the guidance channels appended, all zero."""
        section = super().validate_section()
        section["guidance"] = self.guidance()
        section["preprocessing"] = {
            "_target_": "Compose",
            "transforms": "$@train#deterministic_transforms + [@validate#guidance]",
        }
        return section

    def inference(self) -> dict[str, Any]:
        """Inference with the guidance channels appended last (clicks under ``guidance``, or none)."""
        config = super().inference()
        config["label_names"] = self.label_names
        config["guidance_sigma"] = SIGMA
        config["preprocessing"]["transforms"].append(self.guidance())
        return config

    def metadata(self) -> dict[str, Any]:
        """The planned metadata and the ``interactive`` block clients look for."""
        metadata = super().metadata()
        # the network's input (MONAI's verify_net_in_out, export) is the image and the guidance
        # channels; guidance_channels tells medseg's suitability check how many the user does not give
        image = metadata["network_data_format"]["inputs"]["image"]
        image["num_channels"] = len(self.channels) + len(self.label_names)
        image["guidance_channels"] = len(self.label_names)
        image["channel_def"] = {
            **image["channel_def"],
            **{str(len(self.channels) + i): f"guidance: {name}" for i, name in enumerate(self.label_names)},
        }
        metadata["interactive"] = {
            "type": "deepedit",
            "label_names": self.label_names,
            "sigma": SIGMA,
            "number_intensity_ch": len(self.channels),
            "clicks": "{label name or 'background': [[i, j, k], ...]}, indices of the stored image's voxel array",
        }
        metadata["description"] += (
            " Interactive (DeepEdit-style): clicks per label guide it; without clicks it segments on its own."
        )
        return metadata

    def results(self) -> list[str]:
        """The planned results section, then the click protocol's table when recorded."""
        lines = super().results()
        clicks = (self.record or {}).get("clicks")
        if not clicks:
            return lines
        names = [self.labels[k] for k in sorted(self.labels) if k != 0]
        counts = sorted(int(k) for k in clicks["mean_dice"])
        return [
            *lines,
            "### Clicks",
            "The click protocol (`medseg evaluate BUNDLE --fold 0 --clicks "
            f"{' '.join(map(str, counts))}`): after each prediction, one click at the voxel of the largest "
            "connected error region farthest from its border, with the true label there; clicks accumulate. "
            "Mean Dice over the test fold's cases on their original grid:",
            "",
            "| clicks | " + " | ".join([*names, "mean"]) + " |",
            "|---:|" + "---:|" * (len(names) + 1),
            *(
                f"| {k} | "
                + " | ".join(
                    [
                        *(f"{clicks['dice'][str(k)][n]:.4f}" for n in names),
                        f"**{clicks['mean_dice'][str(k)]:.4f}**",
                    ]
                )  # fmt: skip
                + " |"
                for k in counts
            ),
            "",
        ]
