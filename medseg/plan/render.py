"""Render a complete MONAI bundle from a plan: the one template every planned bundle comes from.

The shipped hippocampus configs were written by hand and drifted apart (the CPU speed-ups of
``hippocampus_unet3d`` exist in no other bundle; ``logging.conf`` and ``evaluate.json`` are
copies). Here every file of a bundle is produced by one function of the plan, so a fix to the
recipe reaches every bundle, and ``plans/plan.json`` alone (no data, no timing) re-renders a
bundle byte for byte.

Files rendered (spleen-zoo layout, keeping the keys medseg's commands use): ``configs/train.json``
(``dataset_dir``, ``datalist``, ``train_datalist``, ``val_datalist``, ``val_fold``, ``device``,
``network_def``, ``run``), ``configs/evaluate.json``, ``configs/inference.json`` (``datalist``,
``output_dir``, ``checkpointloader``, ``evaluator``), ``configs/multi_gpu_train.json``,
``configs/logging.conf``, ``configs/metadata.json``, ``docs/README.md`` and ``LICENSE``.

The recipe is the measured CPU recipe of ``hippocampus_unet3d`` (batch Dice-CE, AdamW from the
first step, cosine decay, weight EMA, channels-last U-Net weights on CPU, metadata tracking off
after caching, one-hot by ``medseg.transforms.OneHotd``, single windows padded to a batch of two)
under the test-fold rule: folds 2-4 train, fold 1 monitors, fold 0 is never looked at, and the
final EMA weights are kept (no early stopping, no best-epoch choice).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError

__all__ = ["BUNDLE_FILES", "RECORD_FILE", "check_bundle", "read_record", "render_bundle", "render_files"]

# What the bundle's own training run gave (``plans/training.json``): metadata.json's version,
# changelog and eval_metrics and the README's results come from it, so that a trained bundle
# still re-renders exactly from its plans/ folder. Its fields:
# {"version": "0.4.0", "changelog": {version: text}, "command": str, "epochs": int,
#  "wall_minutes": float, "machine": str, "test_cases": int, "dice": {label name: float},
#  "mean_dice": float, "eval_metrics": {name: float}}
RECORD_FILE = "plans/training.json"
_RECORD_FIELDS = ("version", "changelog", "command", "epochs", "wall_minutes", "machine", "eval_metrics")

BUNDLE_FILES = (
    "configs/train.json",
    "configs/evaluate.json",
    "configs/inference.json",
    "configs/multi_gpu_train.json",
    "configs/logging.conf",
    "configs/metadata.json",
    "docs/README.md",
    "LICENSE",
)
_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
_LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def _v(plan: Mapping[str, Any], key: str) -> Any:
    return plan["values"][key]["value"]


def _monitor_only(training: Mapping[str, Any]) -> bool:
    """Whether the plan trains on its validation fold too (``medseg train --fold all``), which then only
    monitors; ``train_folds`` is then a literal list rather than "every fold but test and validation"."""
    return int(training["val_fold"]) in {int(k) for k in training["train_folds"]}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "class"


class _Recipe:
    """The plan's values, read once, and the pieces the config files share."""

    def __init__(self, plan: Mapping[str, Any], dataset_folder: str) -> None:
        self.plan = plan
        self.inputs = plan["inputs"]
        self.dataset = self.inputs["dataset"]
        slicing = _v(plan, "slicing")
        # a 2-D network on 3-D images (hippocampus_unet2d's recipe): random slices across slice_axis
        # for training, MONAI's SliceInferer for validation and inference
        self.slice_axis: int | None = None if slicing is None else int(slicing["slice_axis"])
        self.slices_per_volume = 1 if slicing is None else int(slicing["slices_per_volume"])
        self.dims = int(self.inputs["dims"])
        self.png = self.dataset["file_ending"].lower() == ".png"
        self.labels = {int(k): v for k, v in self.dataset["labels"].items()}
        self.num_classes = len(self.labels)
        self.channels = list(self.dataset["channels"].values())
        self.roi = list(_v(plan, "patch_size"))
        self.spacing = list(_v(plan, "target_spacing"))
        self.training = _v(plan, "training")
        self.augmentation = _v(plan, "augmentation")
        self.inference = _v(plan, "inference")
        self.network = dict(_v(plan, "network"))
        self.network["out_channels"] = "@num_classes"
        self.dataset_folder = dataset_folder
        # connected-component steps accepted by cross-validation (plans/cv.json), or none
        self.components: dict[str, Any] | None = None
        self.cpu_padding = self.dims == 3  # single 3-D windows run on oneDNN only in batches of two

    def volume_roi(self) -> list[int]:
        """The training crop in image axes: the patch, and one voxel across the slice axis."""
        assert self.slice_axis is not None
        roi = list(self.roi)
        roi.insert(self.slice_axis, 1)
        return roi

    # -- transforms ------------------------------------------------------------------------

    def load(self, keys: list[str], medseg_reader: bool) -> dict[str, Any]:
        if self.png:
            return {"_target_": "LoadImaged", "keys": keys, "reader": "PILReader", "image_only": True}
        target = "medseg.io.LoadImaged" if medseg_reader else "LoadImaged"
        return {"_target_": target, "keys": keys if len(keys) > 1 else keys[0], "image_only": True}

    def geometry(self, keys: list[str]) -> list[dict[str, Any]]:
        one = keys if len(keys) > 1 else keys[0]
        steps: list[dict[str, Any]] = [{"_target_": "EnsureChannelFirstd", "keys": one}]
        if self.png:
            return steps  # photographs: pixel grid, no orientation
        modes = ["bilinear", "nearest"][: len(keys)]
        steps.append({"_target_": "Orientationd", "keys": one, "axcodes": "RAS"})
        steps.append(
            {
                "_target_": "Spacingd",
                "keys": one,
                "pixdim": self.spacing,
                "mode": modes if len(keys) > 1 else modes[0],
            }
        )
        return steps

    def normalize(self) -> dict[str, Any]:
        schemes = _v(self.plan, "normalization")
        kinds = {entry["scheme"] for entry in schemes}
        if len(kinds) > 1:
            raise ConfigError(
                f"channels with different normalisation schemes ({sorted(kinds)}) are not rendered yet"
            )
        first = schemes[0]
        if first["scheme"] == "zscore":
            return {
                "_target_": "NormalizeIntensityd",
                "keys": "image",
                "nonzero": first["nonzero"],
                "channel_wise": True,
            }
        if first["scheme"] == "rgb_to_0_1":
            return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 0.0, "a_max": 255.0,
                    "b_min": 0.0, "b_max": 1.0, "clip": True}  # fmt: skip
        if len(schemes) > 1:
            raise ConfigError("CT normalisation of several channels is not rendered yet")
        low, high = first["clip"]
        mean, std = first["mean"], first["std"]
        return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": low, "a_max": high,
                "b_min": (low - mean) / std, "b_max": (high - mean) / std, "clip": True}  # fmt: skip

    def deterministic(self) -> list[dict[str, Any]]:
        keys = ["image", "label"]
        return [
            self.load(keys, medseg_reader=False),
            *self.geometry(keys),
            self.normalize(),
            {"_target_": "EnsureTyped", "keys": keys, "dtype": ["$torch.float32", "$torch.uint8"]},
        ]

    def random(self) -> list[dict[str, Any]]:
        keys = ["image", "label"]
        aug = self.augmentation
        rotate = list(aug["rotate_range"])
        if aug.get("rotate_in_plane_only"):
            coarse = max(range(len(self.spacing)), key=lambda i: self.spacing[i])
            rotate = [rotate[0] if i == coarse else 0.0 for i in range(3)]
        if self.slice_axis is None:
            steps: list[dict[str, Any]] = [
                {"_target_": "SpatialPadd", "keys": keys, "spatial_size": "@roi_size"},
                {"_target_": "RandSpatialCropd", "keys": keys, "roi_size": "@roi_size", "random_size": False},
            ]
        else:
            steps = [
                {"_target_": "SpatialPadd", "keys": keys, "spatial_size": self.volume_roi()},
                {
                    "_target_": "RandSpatialCropSamplesd",
                    "keys": keys,
                    "roi_size": self.volume_roi(),
                    "num_samples": "@slices_per_volume",
                    "random_size": False,
                },  # fmt: skip
                {"_target_": "SqueezeDimd", "keys": keys, "dim": self.slice_axis + 1},
            ]
        steps += [
            {
                "_target_": "RandAffined",
                "keys": keys,
                "prob": aug["affine_prob"],
                "rotate_range": rotate,
                "scale_range": [aug["scale_range"]] * self.dims,
                "mode": ["bilinear", "nearest"],
                "padding_mode": "zeros",
            },
        ]
        steps += [
            {"_target_": "RandFlipd", "keys": keys, "spatial_axis": a, "prob": 0.5}
            for a in aug["mirror_axes"]
        ]
        steps += [
            {
                "_target_": "RandScaleIntensityd",
                "keys": "image",
                "factors": aug["intensity_scale"],
                "prob": 0.5,
            },
            {
                "_target_": "RandShiftIntensityd",
                "keys": "image",
                "offsets": aug["intensity_shift"],
                "prob": 0.5,
            },
        ]
        return steps

    def sliding_window(self, **extra: Any) -> dict[str, Any]:
        if self.slice_axis is not None:
            extra = {"spatial_dim": self.slice_axis, **extra}
        return {
            "_target_": "SlidingWindowInferer" if self.slice_axis is None else "SliceInferer",
            "roi_size": "@roi_size",
            "sw_batch_size": self.inference["sw_batch_size"],
            "overlap": self.inference["overlap"],
            "mode": self.inference["mode"],
            **extra,
        }

    def largest_components(self) -> list[dict[str, Any]]:
        """The learned connected-component step after the argmax, when cross-validation accepted one."""
        c = self.components
        if not c or not (c.get("foreground") or c.get("classes")):
            return []
        return [
            {
                "_target_": "medseg.postprocess.LargestComponentsd",
                "keys": "pred",
                "foreground": bool(c.get("foreground")),
                "classes": [int(v) for v in c.get("classes", [])],
            }
        ]

    def class_metrics(self, hd95: bool) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        for value, name in self.labels.items():
            if value == 0:
                continue
            metrics[f"val_dice_{_slug(name)}"] = {
                "_target_": "MeanDice",
                "include_background": False,
                "output_transform": f"$medseg.engine.metrics.select_class({value})",
            }
        if hd95:
            for value, name in self.labels.items():
                if value == 0:
                    continue
                metrics[f"val_hd95_{_slug(name)}"] = {
                    "_target_": "HausdorffDistance",
                    "include_background": False,
                    "percentile": 95,
                    "output_transform": f"$medseg.engine.metrics.select_class({value})",
                }
        return metrics

    def datalist(self) -> str:
        return "$medseg.data.dataset.load_datalist(@dataset_dir)"

    def dataset_dir(self) -> str:
        return f"$medseg.data.default_data_dir({self.dataset_folder!r})"


def _train(r: _Recipe) -> dict[str, Any]:
    t = r.training
    epochs = int(t["max_epochs"])
    one_hot = {"_target_": "medseg.transforms.OneHotd", "keys": ["pred", "label"], "argmax": [True, False],
               "num_classes": "@num_classes"}  # fmt: skip
    loss = _v(r.plan, "loss")
    loss_def: dict[str, Any] = {"_target_": "medseg.losses.create_loss", "name": loss["name"],
                                "num_classes": "@num_classes", "batch": bool(loss["batch"])}  # fmt: skip
    if loss.get("class_weights"):
        loss_def["class_weights"] = loss["class_weights"]
    save_dict = {"model": "@network", "ema": "$@train#ema.averaged", "optimizer": "@optimizer",
                 "lr_scheduler": "@lr_scheduler", "trainer": "@train#trainer"}  # fmt: skip
    loss_out = "$monai.handlers.from_engine(['loss'], first=True)"
    return {
        "imports": [
            "$import os",
            "$import torch",
            "$import monai",
            "$import ignite",
            "$import medseg.data",
            "$import medseg.data.dataset",
            "$import medseg.engine",
            "$import medseg.engine.metrics",
            "$import medseg.networks",
            "$import medseg",
        ],  # fmt: skip
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/runs/train'",
        "dataset_dir": r.dataset_dir(),
        "test_fold": int(t["test_fold"]),
        "val_fold": int(t["val_fold"]),
        "train_folds": list(t["train_folds"]) if _monitor_only(t) else
                       "$[k for k in range(5) if k not in (@test_fold, @val_fold)]",  # fmt: skip
        "datalist": r.datalist(),
        "train_datalist": "$medseg.data.split_folds(@datalist, @train_folds)",
        "val_datalist": "$medseg.data.split_folds(@datalist, @val_fold)",
        "seed": 0,
        "max_epochs": epochs,
        "val_interval": max(1, min(10, epochs // 20)),
        "learning_rate": t["learning_rate"],
        "ema_decay": t["ema_decay"],
        **({} if r.slice_axis is None else {"slices_per_volume": r.slices_per_volume}),
        # volumes per step (a 2-D network on volumes takes slices_per_volume slices of each)
        "batch_size": max(1, int(_v(r.plan, "batch_size")) // r.slices_per_volume),
        "num_workers": "$4 if torch.cuda.is_available() else 0",
        "resume": False,
        "progress": True,
        "amp": "$torch.cuda.is_available()",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "num_classes": r.num_classes,
        "roi_size": r.roi,
        "network_def": r.network,
        "channels_last": "$not torch.cuda.is_available()" if t["channels_last"] else False,
        "track_meta_in_training": bool(t["track_meta_in_training"]),
        "network": "$medseg.networks.to_channels_last(@network_def.to(@device), @channels_last)",
        "loss": loss_def,
        "optimizer": {
            "_target_": "torch.optim.AdamW",
            "params": "$@network.parameters()",
            "lr": "@learning_rate",
            "weight_decay": t["weight_decay"],
        },  # fmt: skip
        "lr_scheduler": {
            "_target_": "monai.optimizers.WarmupCosineSchedule",
            "optimizer": "@optimizer",
            "warmup_steps": 0,
            "t_total": "$@max_epochs * len(@train#dataloader)",
        },  # fmt: skip
        "train": {
            "deterministic_transforms": r.deterministic(),
            "random_transforms": r.random(),
            "preprocessing": {
                "_target_": "Compose",
                "transforms": "$@train#deterministic_transforms + @train#random_transforms",
            },  # fmt: skip
            "dataset": {
                "_target_": "CacheDataset",
                "data": "@train_datalist",
                "transform": "@train#preprocessing",
                "cache_rate": 1.0,
                "num_workers": 0,
                "progress": False,
            },  # fmt: skip
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@train#dataset",
                "batch_size": "@batch_size",
                "shuffle": True,
                "num_workers": "@num_workers",
                "persistent_workers": "$@num_workers > 0",
            },  # fmt: skip
            "inferer": {"_target_": "SimpleInferer"},
            "ema": {"_target_": "medseg.engine.ModelEMA", "network": "@network", "decay": "@ema_decay"},
            "postprocessing": {"_target_": "Compose", "transforms": [one_hot]},
            "resume_handler": {
                "_target_": "medseg.engine.ResumeFromLatest",
                "ckpt_dir": "$@output_dir + '/checkpoints'",
                "enabled": "@resume",
                "map_location": "@device",
                "load_dict": save_dict,
            },  # fmt: skip
            "last_checkpoint": {
                "_target_": "medseg.engine.AtomicCheckpointSaver",
                "save_dir": "$@output_dir + '/checkpoints'",
                "save_dict": save_dict,
                "save_interval": 1,
                "n_saved": 1,
                "epoch_level": True,
            },  # fmt: skip
            "final_weights": {
                "_target_": "medseg.engine.AtomicCheckpointSaver",
                "save_dir": "@ckpt_dir",
                "save_dict": {"model": "$@train#ema.averaged"},
                "save_final": True,
                "final_filename": "model.pt",
            },  # fmt: skip
            "handlers": [
                {
                    "_target_": "LrScheduleHandler",
                    "lr_scheduler": "@lr_scheduler",
                    "epoch_level": False,
                    "print_lr": False,
                },  # fmt: skip
                {
                    "_target_": "ValidationHandler",
                    "validator": "@validate#evaluator",
                    "epoch_level": True,
                    "interval": "@val_interval",
                },  # fmt: skip
                {
                    "_target_": "medseg.engine.CSVLogger",
                    "filename": "$@output_dir + '/log.csv'",
                    "optimizer": "@optimizer",
                    "evaluator": "@validate#evaluator",
                },  # fmt: skip
                {
                    "_target_": "medseg.engine.TrainingCurvePlot",
                    "csv_file": "$@output_dir + '/log.csv'",
                    "filename": "$@output_dir + '/training_curve.png'",
                },  # fmt: skip
                {"_target_": "medseg.engine.ProgressBar", "enabled": "@progress"},
                {
                    "_target_": "StatsHandler",
                    "tag_name": "train_loss",
                    "iteration_log": False,
                    "output_transform": loss_out,
                },  # fmt: skip
                {
                    "_target_": "TensorBoardStatsHandler",
                    "log_dir": "$@output_dir + '/tensorboard'",
                    "tag_name": "train_loss",
                    "output_transform": loss_out,
                },  # fmt: skip
            ],
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": "@max_epochs",
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "prepare_batch": "$medseg.engine.prepare_plain_batch",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "train_handlers": "@train#handlers",
                "amp": "@amp",
            },  # fmt: skip
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
            "dataset": {
                "_target_": "CacheDataset",
                "data": "@val_datalist",
                "transform": "@validate#preprocessing",
                "cache_rate": 1.0,
                "num_workers": 0,
                "progress": False,
            },  # fmt: skip
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@validate#dataset",
                "batch_size": 1,
                "shuffle": False,
                "num_workers": 0,
            },  # fmt: skip
            "inferer": r.sliding_window(),
            "postprocessing": "%train#postprocessing",
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                {
                    "_target_": "TensorBoardStatsHandler",
                    "log_dir": "$@output_dir + '/tensorboard'",
                    "iteration_log": False,
                },  # fmt: skip
            ],
            "key_metric": {
                "val_mean_dice": {
                    "_target_": "MeanDice",
                    "include_background": False,
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                }
            },  # fmt: skip
            "additional_metrics": r.class_metrics(hd95=False),
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": "$medseg.networks.PadBatch(@train#ema.averaged)"
                if r.cpu_padding
                else "$@train#ema.averaged",
                "inferer": "@validate#inferer",
                "postprocessing": "@validate#postprocessing",
                "key_val_metric": "@validate#key_metric",
                "additional_metrics": "@validate#additional_metrics",
                "val_handlers": "@validate#handlers",
                "amp": "@amp",
            },  # fmt: skip
        },
        "initialize": [
            "$monai.utils.set_determinism(seed=@seed)",
            "$torch.set_num_threads(max(1, torch.get_num_threads()))",
            "$@train#resume_handler.attach(@train#trainer)",
            "$@train#last_checkpoint.attach(@train#trainer)",
            "$@train#final_weights.attach(@train#trainer)",
            "$@train#ema.attach(@train#trainer)",
            "$monai.data.set_track_meta(@track_meta_in_training)",
        ],
        "run": ["$@train#trainer.run()"],
        "finalize": ["$monai.data.set_track_meta(True)"],
    }


def _evaluate(r: _Recipe) -> dict[str, Any]:
    return {
        "output_dir": "$@bundle_root + '/runs/eval'",
        "validate#evaluator#network": "@network",
        "validate#postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": ["pred", "label"],
                    "transform": "@validate#preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": [False, True],
                    "to_tensor": True,
                },  # fmt: skip
                *(
                    [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}, *r.largest_components()]
                    if r.largest_components()
                    else []
                ),
                {
                    "_target_": "medseg.transforms.OneHotd",
                    "keys": ["pred", "label"],
                    "argmax": [not r.largest_components(), False],
                    "num_classes": "@num_classes",
                },  # fmt: skip
            ],
        },
        # a named key, so that ``medseg evaluate --weights`` overrides ``checkpointloader#load_path``
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@ckpt_dir + '/model.pt'",
            "load_dict": {"model": "@network"},
            "map_location": "@device",
        },  # fmt: skip
        "validate#handlers": [
            "@checkpointloader",
            {"_target_": "StatsHandler", "iteration_log": False},
            {
                "_target_": "MetricsSaver",
                "save_dir": "@output_dir",
                "metrics": "*",
                "metric_details": "*",
                "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
                "summary_ops": "*",
            },  # fmt: skip
        ],
        "validate#additional_metrics": r.class_metrics(hd95=True),
        "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
        "run": ["$@validate#evaluator.run()"],
    }


def _inference(r: _Recipe) -> dict[str, Any]:
    return {
        "imports": [
            "$import os",
            "$import numpy",
            "$import torch",
            "$import monai",
            "$import medseg.data",
            "$import medseg.data.dataset",
            "$import medseg.io",
            "$import medseg",
        ],  # fmt: skip
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/runs/inference'",
        "output_ext": ".png" if r.png else ".nii.gz",
        "output_dtype": "$numpy.uint8",
        "output_postfix": "seg",
        "separate_folder": False,
        "dataset_dir": r.dataset_dir(),
        "datalist": f"$[item['image'] for item in medseg.data.split_folds({r.datalist()[1:]}, "
        f"{int(r.training['test_fold'])})]",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "amp": "$torch.cuda.is_available()",
        "num_classes": r.num_classes,
        "roi_size": r.roi,
        "network_def": r.network,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                r.load(["image"], medseg_reader=True),
                *r.geometry(["image"]),
                r.normalize(),
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': path} for path in @datalist]",
            "transform": "@preprocessing",
        },  # fmt: skip
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },  # fmt: skip
        "inferer": r.sliding_window(sw_device="@device", device="cpu"),
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": False,
                    "to_tensor": True,
                },  # fmt: skip
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                *r.largest_components(),
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_ext": "@output_ext",
                    "output_dtype": "@output_dtype",
                    "output_postfix": "@output_postfix",
                    "separate_folder": "@separate_folder",
                    "resample": False,
                },  # fmt: skip
            ],
        },
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": "@amp",
        },  # fmt: skip
        "checkpointloader": {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
            "map_location": "@device",
        },  # fmt: skip
        "initialize": ["$monai.utils.set_determinism(seed=0)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }


def _multi_gpu(r: _Recipe) -> dict[str, Any]:
    return {
        "imports": [
            "$import os",
            "$import torch",
            "$import torch.distributed as dist",
            "$import monai",
            "$import ignite",
            "$import medseg.data",
            "$import medseg.data.dataset",
            "$import medseg.engine",
            "$import medseg.engine.metrics",
            "$import medseg",
        ],  # fmt: skip
        "backend": "$'nccl' if torch.cuda.is_available() else 'gloo'",
        "device": "$torch.device(f'cuda:{dist.get_rank()}') if torch.cuda.is_available() else torch.device('cpu')",
        "channels_last": False,
        "track_meta_in_training": True,
        "network": {
            "_target_": "torch.nn.parallel.DistributedDataParallel",
            "module": "$@network_def.to(@device)",
            "device_ids": "$[@device] if torch.cuda.is_available() else None",
        },  # fmt: skip
        "train#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@train#dataset",
            "even_divisible": True,
            "shuffle": True,
        },  # fmt: skip
        "train#dataloader#sampler": "@train#sampler",
        "train#dataloader#shuffle": False,
        "train#case_log": {"_target_": "medseg.engine.CaseLog", "prefix": "$@output_dir + '/cases_'"},
        "train#trainer#train_handlers": "$(@train#handlers if dist.get_rank() == 0 else @train#handlers[:2]) "
        "+ [@train#case_log]",
        "validate#sampler": {
            "_target_": "DistributedSampler",
            "dataset": "@validate#dataset",
            "even_divisible": False,
            "shuffle": False,
        },  # fmt: skip
        "validate#dataloader#sampler": "@validate#sampler",
        "validate#evaluator#val_handlers": "$[h for h in @validate#handlers if dist.get_rank() == 0]",
        "initialize": [
            "$dist.is_initialized() or dist.init_process_group(backend=@backend)",
            "$torch.cuda.set_device(@device) if torch.cuda.is_available() else None",
            "$monai.utils.set_determinism(seed=@seed)",
            "$import logging",
            "$@train#trainer.logger.setLevel(logging.WARNING if dist.get_rank() > 0 else logging.INFO)",
            "$@validate#evaluator.logger.setLevel(logging.WARNING if dist.get_rank() > 0 else logging.INFO)",
            "$@train#resume_handler.attach(@train#trainer)",
            "$@train#last_checkpoint.attach(@train#trainer)",
            "$dist.get_rank() == 0 and @train#final_weights.attach(@train#trainer)",
            "$@train#ema.attach(@train#trainer)",
        ],
        "run": ["$@train#trainer.run()"],
        "finalize": [
            "$dist.is_initialized() and dist.barrier()",
            "$dist.is_initialized() and dist.destroy_process_group()",
        ],
    }


def _versions(plan: Mapping[str, Any]) -> dict[str, str]:
    """The versions the plan recorded (older plans: the installed ones)."""
    recorded = plan["inputs"].get("versions")
    if recorded:
        return dict(recorded)
    from medseg.plan.planner import installed_versions

    return installed_versions()


def _metadata(r: _Recipe, record: Mapping[str, Any] | None) -> dict[str, Any]:
    versions = _versions(r.plan)
    limits = _v(r.plan, "suitability")
    divisor = _total_stride(r)
    # twice the total stride: the deepest feature map of a one-unit input keeps 2 voxels per axis,
    # which instance norm needs (monai.bundle verify_net_in_out feeds n = 1)
    shape = [f"{2 * d}*n" for d in divisor]
    labels = {str(k): v for k, v in r.labels.items()}
    channel_def = {str(i): name for i, name in enumerate(r.channels)}
    image: dict[str, Any] = {
        "type": "image",
        "format": "RGB"
        if "rgb_to_0_1" in {e["scheme"] for e in _v(r.plan, "normalization")}
        else "magnitude",
        "num_channels": len(r.channels),
        "spatial_shape": shape,
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": True,
        "channel_def": channel_def,
        "plausible_extent_mm": limits["plausible_extent_mm"],
        "plausible_spacing_mm": limits["plausible_spacing_mm"],
        "tta_flip_axes": limits["tta_flip_axes"],
    }
    if "modality" in limits:
        image["modality"] = limits["modality"]
    ds = r.dataset
    label_text = ", ".join(f"{k} {v}" for k, v in labels.items())
    network_name = r.network["_target_"].rsplit(".", 1)[-1]
    metadata = {
        "schema": _SCHEMA,
        "version": record["version"] if record else "0.1.0",
        "changelog": dict(record["changelog"]) if record else {"0.1.0": "generated by medseg plan"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"],
        "numpy_version": versions["numpy"],
        "required_packages_version": {
            k: versions[k] for k in ("medseg", "nibabel", "pytorch-ignite", "tensorboard")
        },
        "supported_apps": {},
        "name": r.inputs["name"],
        "task": f"Segmentation of {', '.join(v for k, v in labels.items() if k != '0')} ({ds['name']})",
        "description": f"A {r.dims}-D {network_name} planned by medseg plan from {ds['name']} "
        f"({ds['num_cases']} labelled cases) and trained on folds 2-4 of medseg's fixed 5-fold split "
        "(fold 1 monitors, fold 0 is the test fold). Research use only, not for diagnosis.",
        "authors": "medseg developers",
        "copyright": "Copyright (c) medseg developers",
        "data_source": "; ".join(
            x for x in (ds["name"], ds.get("reference", ""), ds.get("licence", "")) if x
        ),
        "data_type": "png" if r.png else "nifti",
        "image_classes": ", ".join(f"channel {k}: {v}" for k, v in channel_def.items()),
        "label_classes": label_text,
        "pred_classes": label_text,
        "eval_metrics": dict(record["eval_metrics"]) if record else {},
        "intended_use": "Research use only, not for diagnosis",
        "references": [x for x in (ds.get("reference", ""),) if x],
        "network_data_format": {
            "inputs": {"image": image},
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": r.num_classes,
                    "spatial_shape": shape,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": True,
                    "channel_def": labels,
                    **({"segment_codes": r.inputs["concepts"]} if r.inputs.get("concepts") else {}),
                }
            },
        },
    }
    metadata.update(r.inputs.get("metadata") or {})  # recorded overrides of the descriptive text
    return metadata


def _total_stride(r: _Recipe) -> list[int]:
    data = r.plan["values"]["network"]["data"]
    target = r.network["_target_"].rsplit(".", 1)[-1]
    if target == "UNet":
        return [2**p for p in data["pools_per_axis"]]
    if target == "SegNet":
        return [2 ** len(r.network["channels"])] * r.dims
    if target == "FCN":
        return [32] * r.dims
    return [int(r.network["output_stride"])] * r.dims


def _results(record: Mapping[str, Any] | None, test_fold: int) -> list[str]:
    """The README's section on the bundle's own training run and its test-fold Dice."""
    if not record:
        return [
            "## Training and results",
            "Not trained yet: `models/model.pt` comes from running `configs/train.json`; record the run in "
            f"`{RECORD_FILE}` and re-render.",
            "",
        ]
    dice = record.get("dice", {})
    return [
        "## Training and results",
        f"`models/model.pt` is the final EMA weights of this bundle's own `configs/train.json` run on "
        f"{record['machine']}:",
        "",
        "```bash",
        record["command"],
        "```",
        "",
        f"{record['epochs']} epochs in {record['wall_minutes']:.1f} minutes (wall clock, data caching included).",
        "",
        f"Test fold {test_fold} ({record.get('test_cases', '?')} cases), Dice on each case's original grid, "
        "measured from the shipped weights by `medseg evaluate BUNDLE --fold 0`:",
        "",
        *dice_table(dice, record["mean_dice"]),
        "",
    ]


def dice_table(dice: Mapping[str, float], mean: float) -> list[str]:
    """A one-row Markdown table of the Dice per label and the (bold) mean."""
    return [
        "| " + " | ".join([*dice, "mean"]) + " |",
        "|" + "---:|" * (len(dice) + 1),
        "| " + " | ".join([*(f"{v:.4f}" for v in dice.values()), f"**{mean:.4f}**"]) + " |",
    ]


def step_lines(postprocessing: Mapping[str, Any]) -> list[str]:
    """One line per postprocessing step tried: accepted or rejected, class Dice before and after."""
    return [
        f"- {s['step']}: {'accepted' if s['accepted'] else 'rejected'} (Dice "
        f"{', '.join(f'{v:.5f}' for v in s['dice_before'])} -> {', '.join(f'{v:.5f}' for v in s['dice_after'])})"
        for s in postprocessing.get("steps", [])
    ]


def cv_section(cv: Mapping[str, Any] | None, labels: Mapping[int, str]) -> list[str]:
    """The README's cross-validation table: each member's Dice on its own fold, and all folds pooled."""
    if not cv:
        return []
    names = [labels[k] for k in sorted(labels) if k != 0]
    rows = []
    for fold, member in cv["members"].items():
        cells = [f"{member['dice'][n]:.4f}" for n in names]
        rows.append(
            f"| {fold} | {member['cases']} | {member['epochs']} | "
            + ("-" if member.get("minutes") is None else f"{member['minutes']:.1f}")
            + " | "
            + " | ".join(cells)
            + f" | {member['mean_dice']:.4f} |"
        )
    pooled = " | ".join(f"{cv['dice'][n]:.4f}" for n in names)
    lines = [
        "## Cross-validation",
        "One member per non-test fold (`medseg train BUNDLE --cv`): the member of fold k trains on the "
        "other non-test folds and predicts fold k. Dice on each member's own fold (out-of-fold), and over "
        "all out-of-fold cases:",
        "",
        "| fold | cases | epochs | minutes | " + " | ".join(names) + " | mean |",
        "|---:|---:|---:|---:|" + "---:|" * (len(names) + 1),
        *rows,
        f"| all | {cv['cases']} | | | {pooled} | {cv['mean_dice']:.4f} |",
        "",
    ]
    post = cv.get("postprocessing")
    if post:
        lines += [
            "Postprocessing decided on these out-of-fold predictions (nnU-Net's rule: a step is kept when "
            "the mean Dice rises and no class falls):",
            "",
            *step_lines(post),
            "",
        ]
    return lines


def _readme(r: _Recipe, record: Mapping[str, Any] | None, cv: Mapping[str, Any] | None = None) -> str:
    ds = r.dataset
    rows = []
    for key, entry in r.plan["values"].items():
        value = json.dumps(entry["value"]).replace("|", "\\|")
        rule = entry["rule"].replace("|", "\\|")
        rows.append(f"| `{key}` | `{value}` | {rule} |")
    t = r.training
    name = r.inputs["name"]
    return "\n".join(
        [
            f"# {name}",
            "",
            "**Research use only, not for diagnosis.**",
            "",
            "Generated by `medseg plan` from `plans/plan.json` (do not edit the configs by hand: re-plan, or "
            "record an override in `plans/`).",
            "",
            "## Data",
            f"{ds['name']}: {ds['num_cases']} labelled cases ({ds['layout']} layout, `{ds['file_ending']}`), "
            f"channels {', '.join(r.channels)}, labels "
            f"{', '.join(f'{k} {v}' for k, v in r.labels.items())}.",
            f"Licence of the data: {ds.get('licence') or 'not stated in dataset.json'}.",
            *([f"Reference: {ds['reference']}."] if ds.get("reference") else []),
            "",
            "## Protocol",
            "medseg's fixed split: sort the case ids, fold k holds the cases whose index % 5 == k. Fold "
            f"{t['test_fold']} is the test fold: no decision (schedule, checkpoint, early stopping) looks at it. "
            f"The network trains on folds {', '.join(map(str, t['train_folds']))} for a fixed {t['max_epochs']} "
            f"epochs, fold {t['val_fold']} is validated for monitoring"
            f"{' only (it is trained on too)' if _monitor_only(t) else ''}, and the final EMA weights are kept as "
            "`models/model.pt`. Accuracy figures are measured on fold 0 only.",
            "",
            "## Plan",
            "| value | planned | rule |",
            "|---|---|---|",
            *rows,
            "",
            *_results(record, t["test_fold"]),
            *cv_section(cv, r.labels),
            "## Commands",
            "```bash",
            "# train (CPU or GPU) and evaluate on the test fold",
            f"medseg train bundles/{name} --data DATASET",
            f"medseg evaluate bundles/{name} --data DATASET --fold 0 --output metrics.json",
            "# or with MONAI alone, from this folder",
            "python -m monai.bundle run --config_file configs/train.json --bundle_root . --dataset_dir DATASET",
            "```",
            "",
        ]
    )


def _license(r: _Recipe) -> str:
    ds = r.dataset
    return (
        "Code and configuration: Apache License 2.0 (see the medseg repository).\n\n"
        f"Model weights (models/model.pt), once trained, derive from {ds['name']}"
        + (f" ({ds['reference']})" if ds.get("reference") else "")
        + f"; the data's licence: {ds.get('licence') or 'not stated in dataset.json'}. The weights are shared "
        "under the data's terms.\n\nResearch use only, not for diagnosis.\n"
    )


def _dump(payload: Any) -> str:
    return json.dumps(payload, indent=4) + "\n"


def read_record(bundle_dir: str | os.PathLike) -> dict[str, Any] | None:
    """A bundle's training record (:data:`RECORD_FILE`), or None when it has none.

    Args:
        bundle_dir: the bundle folder.

    Raises:
        BundleError: the record is not JSON or lacks a field the rendering needs.
    """
    from medseg.errors import BundleError

    path = Path(bundle_dir) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); fix or remove it") from exc
    missing = [k for k in _RECORD_FIELDS if not isinstance(record, dict) or k not in record]
    if missing:
        raise BundleError(f"{path} lacks {', '.join(missing)}; record the training run's {missing[0]}")
    return record


def render_files(
    plan: Mapping[str, Any],
    dataset_folder: str | None = None,
    record: Mapping[str, Any] | None = None,
    cv: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Every file of the bundle, as ``{relative path: text}``; deterministic for a plan.

    Args:
        plan: a plan from :func:`medseg.plan.planner.make_plan` (or a bundle's ``plans/plan.json``).
        dataset_folder: the dataset's folder name under medseg's data folder (``dataset_dir`` of the
            configs resolves it with ``medseg.data.default_data_dir``; ``--data`` overrides it);
            default: the plan's ``inputs.dataset_folder``.
        record: the bundle's training record (:func:`read_record`): version, changelog, test-fold
            figures; default: none (an untrained bundle).
        cv: the bundle's cross-validation record (``plans/cv.json``, :mod:`medseg.ensemble.cv`): its
            Dice table goes into the README and its accepted postprocessing into the configs.

    Raises:
        ConfigError: the plan needs a configuration the template does not render yet.
    """
    folder = (
        dataset_folder or plan["inputs"].get("dataset_folder") or _slug(plan["inputs"]["dataset"]["name"])
    )
    r = _Recipe(plan, folder)
    r.components = (cv or {}).get("postprocessing")
    files = {
        "configs/train.json": _dump(_train(r)),
        "configs/evaluate.json": _dump(_evaluate(r)),
        "configs/inference.json": _dump(_inference(r)),
        "configs/multi_gpu_train.json": _dump(_multi_gpu(r)),
        "configs/logging.conf": _LOGGING_CONF,
        "configs/metadata.json": _dump(_metadata(r, record)),
        "docs/README.md": _readme(r, record, cv),
        "LICENSE": _license(r),
    }
    assert tuple(sorted(files)) == tuple(sorted(BUNDLE_FILES))
    return files


def render_bundle(
    plan: Mapping[str, Any],
    bundle_dir: str | os.PathLike,
    dataset_folder: str | None = None,
    record: Mapping[str, Any] | None = None,
    cv: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write every file of the bundle under ``bundle_dir`` (each atomically); return the paths written.

    Args:
        plan: the plan.
        bundle_dir: the bundle folder (created if missing).
        dataset_folder: see :func:`render_files`.
        record: see :func:`render_files`.
        cv: see :func:`render_files`.
    """
    from medseg.io.atomic import atomic_write_text

    files = render_files(plan, dataset_folder, record, cv)  # everything is rendered before anything is written
    root = Path(bundle_dir)
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_text(path, text))
    return written


def generated_from(bundle_dir: str | os.PathLike) -> str | None:
    """The record a generated bundle is rendered from (``plans/plan.json``, or ``plans/ensemble.json``
    for an ensemble), or None for a bundle that was not generated."""
    root = Path(bundle_dir)
    for relative in ("plans/ensemble.json", "plans/plan.json"):
        if (root / relative).is_file():
            return relative
    return None


def rendered_files(bundle_dir: str | os.PathLike) -> dict[str, str]:
    """What a generated bundle's files must be, rendered from its ``plans/`` (no data, no timing).

    Raises:
        BundleError: the bundle has neither ``plans/plan.json`` nor ``plans/ensemble.json``.
    """
    from medseg.ensemble.cv import read_cv
    from medseg.errors import BundleError

    root = Path(bundle_dir)
    source = generated_from(root)
    if source is None:
        raise BundleError(f"{root} has no plans/plan.json; it was not generated by medseg plan")
    if source == "plans/ensemble.json":
        from medseg.ensemble.bundle import render_ensemble_files

        return render_ensemble_files(root)
    plan = json.loads((root / source).read_text())
    return render_files(plan, record=read_record(root), cv=read_cv(root))


def check_bundle(bundle_dir: str | os.PathLike) -> list[str]:
    """Re-render a bundle from its ``plans/`` (plan or ensemble record, training and cross-validation
    records; no data, no timing) and list what differs.

    Args:
        bundle_dir: a bundle written by ``medseg plan`` or ``medseg ensemble choose``.

    Returns:
        The relative paths of generated files that are missing or differ from the rendering; empty
        when the bundle is exactly what its plan renders.

    Raises:
        BundleError: the bundle has no ``plans/plan.json`` (nor ``plans/ensemble.json``).
    """
    root = Path(bundle_dir)
    different = []
    for relative, text in rendered_files(root).items():
        path = root / relative
        if not path.is_file() or path.read_text() != text:
            different.append(relative)
    return different
