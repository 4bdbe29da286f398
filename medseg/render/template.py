"""The template every generated MONAI bundle is rendered from: :class:`BundleTemplate`.

A bundle's files are a function of its ``plans/`` folder (:mod:`medseg.render.records`) and of
nothing else, so ``plans/`` alone (no data, no timing) re-renders a bundle byte for byte and a fix
to the recipe reaches every bundle. As MONAI Auto3DSeg's ``BundleAlgo.fill_template_config``, each
file is one method built from small pieces (transforms, inferer, metrics, handlers); a kind of
bundle that differs (:class:`medseg.render.ensemble.EnsembleTemplate`) overrides the pieces that
differ instead of patching the output.

Files rendered (spleen-zoo layout, keeping the keys medseg's commands use): ``configs/train.json``
(``dataset_dir``, ``datalist``, ``train_datalist``, ``val_datalist``, ``val_fold``, ``device``,
``network_def``, ``run``), ``configs/evaluate.json``, ``configs/inference.json`` (``datalist``,
``output_dir``, ``checkpointloader``, ``evaluator``), ``configs/multi_gpu_train.json``,
``configs/logging.conf``, ``configs/metadata.json``, ``docs/README.md`` and ``LICENSE``.

The recipe is medseg's measured CPU recipe (batch Dice-CE, AdamW from the first step, cosine decay,
weight EMA, channels-last U-Net weights on CPU, metadata tracking off after caching, one-hot by
``medseg.postprocess.OneHotd``, single windows padded to a batch of two) under the test-fold rule:
the training folds train, the validation fold monitors, fold 0 is never looked at, and the final EMA
weights are kept (no early stopping, no best-epoch choice).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from medseg.errors import ConfigError
from medseg.io.formats import PHOTO_SUFFIXES
from medseg.networks.registry import total_stride
from medseg.render.records import RECORD_FILE, Plan

__all__ = ["BUNDLE_FILES", "LOGGING_CONF", "BundleTemplate", "cv_section", "dice_table", "dump", "step_lines"]

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
SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
LOGGING_CONF = """[loggers]
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
_ONE_HOT = "medseg.postprocess.OneHotd"
_LOSS_OUT = "$monai.handlers.from_engine(['loss'], first=True)"


def dump(payload: Any) -> str:
    """A config file's text: JSON indented by four, as MONAI's model zoo writes it."""
    return json.dumps(payload, indent=4) + "\n"


def slug(name: str) -> str:
    """A label name as a metric-name part (``"Left atrium"`` -> ``left_atrium``)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "class"


def monitor_only(training: Mapping[str, Any]) -> bool:
    """Whether the plan trains on its validation fold too (``medseg train --fold all``), which then only
    monitors; ``train_folds`` is then a literal list rather than "every fold but test and validation"."""
    return int(training["val_fold"]) in {int(k) for k in training["train_folds"]}


def _imports(*modules: str) -> list[str]:
    return [f"$import {m}" for m in modules]


def _checkpoint_loader(load_path: str) -> dict[str, Any]:
    return {"_target_": "CheckpointLoader", "load_path": load_path, "load_dict": {"model": "@network"},
            "map_location": "@device"}  # fmt: skip


def _cache_dataset(data: str, transform: str) -> dict[str, Any]:
    return {"_target_": "CacheDataset", "data": data, "transform": transform, "cache_rate": 1.0, "num_workers": 0,
            "progress": False}  # fmt: skip


class BundleTemplate:
    """A planned bundle's files, each from one method.

    Args:
        plan: the plan (:class:`~medseg.render.records.Plan`, or ``plans/plan.json``'s mapping).
        dataset_folder: the dataset's folder name under medseg's data folder (``dataset_dir`` of the
            configs resolves it with ``medseg.data.default_data_dir``; ``--data`` overrides it);
            default: the plan's ``inputs.dataset_folder``.
        record: the bundle's training record (``plans/training.json``): version, changelog, test-fold
            figures; default: none (an untrained bundle).
        cv: the bundle's cross-validation record (``plans/cv.json``): its Dice table goes into the
            README and its accepted postprocessing into the configs.

    Raises:
        ConfigError: the plan needs a configuration the template does not render yet.
    """

    dump = staticmethod(dump)  # a config file's text

    def __init__(
        self,
        plan: Plan | Mapping[str, Any],
        dataset_folder: str | None = None,
        record: Mapping[str, Any] | None = None,
        cv: Mapping[str, Any] | None = None,
    ) -> None:
        self.plan = Plan.of(plan)
        self.inputs = self.plan.inputs
        self.dataset = self.plan.dataset
        self.record = record
        self.cv = cv
        self.dataset_folder = (
            dataset_folder or self.inputs.get("dataset_folder") or slug(self.dataset["name"])
        )
        slicing = self.plan["slicing"]
        # a 2-D network on 3-D images: random slices across slice_axis for training, MONAI's
        # SliceInferer for validation and inference
        self.slice_axis: int | None = None if slicing is None else int(slicing["slice_axis"])
        self.slices_per_volume = 1 if slicing is None else int(slicing["slices_per_volume"])
        self.dims = int(self.inputs["dims"])
        # photographs (PNG or JPEG: no geometry), read with PIL; labels and predictions are PNGs
        self.png = self.dataset["file_ending"].lower() in PHOTO_SUFFIXES
        # the planned size every photograph is resized to (resolution for time), or None
        self.target_size: list[int] | None = (
            self.plan["resolution"]["target_size"] if "resolution" in self.plan.entries else None
        )
        self.labels = {int(k): v for k, v in self.dataset["labels"].items()}
        self.num_classes = len(self.labels)
        self.channels = list(self.dataset["channels"].values())
        self.roi = list(self.plan["patch_size"])
        self.spacing = list(self.plan["target_spacing"])
        self.training: dict[str, Any] = dict(self.plan["training"])
        self.augmentation = self.plan["augmentation"]
        self.inference_settings = self.plan["inference"]
        self.network = {**self.plan["network"], "out_channels": "@num_classes"}
        # connected-component steps accepted by cross-validation (plans/cv.json), or none
        self.components: Mapping[str, Any] | None = (cv or {}).get("postprocessing")
        self.cpu_padding = self.dims == 3  # single 3-D windows run on oneDNN only in batches of two

    # -- the bundle ------------------------------------------------------------------------

    def files(self) -> dict[str, str]:
        """Every file of the bundle, as ``{relative path: text}``; deterministic for a plan."""
        files = {
            "configs/train.json": self.dump(self.train()),
            "configs/evaluate.json": self.dump(self.evaluate()),
            "configs/inference.json": self.dump(self.inference()),
            "configs/multi_gpu_train.json": self.dump(self.multi_gpu()),
            "configs/logging.conf": LOGGING_CONF,
            "configs/metadata.json": self.dump(self.metadata()),
            "docs/README.md": self.readme(),
            "LICENSE": self.license(),
        }
        assert sorted(files) == sorted(BUNDLE_FILES)
        return files

    # -- transforms ------------------------------------------------------------------------

    def load(self, keys: list[str], medseg_reader: bool) -> dict[str, Any]:
        """The loader: PIL for PNG datasets, else MONAI's (training) or medseg's strict one (inference)."""
        if self.png:
            return {"_target_": "LoadImaged", "keys": keys, "reader": "PILReader", "image_only": True}
        target = "medseg.io.LoadImaged" if medseg_reader else "LoadImaged"
        return {"_target_": target, "keys": keys if len(keys) > 1 else keys[0], "image_only": True}

    def geometry(self, keys: list[str]) -> list[dict[str, Any]]:
        """Channel first, then RAS and the planned spacing (photographs keep their pixel grid)."""
        one = keys if len(keys) > 1 else keys[0]
        steps: list[dict[str, Any]] = [{"_target_": "EnsureChannelFirstd", "keys": one}]
        if self.png:
            return steps + self.resize(keys)
        modes = ["bilinear", "nearest"][: len(keys)]
        steps.append({"_target_": "Orientationd", "keys": one, "axcodes": "RAS"})
        steps.append({"_target_": "Spacingd", "keys": one, "pixdim": self.spacing,
                      "mode": modes if len(keys) > 1 else modes[0]})  # fmt: skip
        return steps

    def resize(self, keys: list[str]) -> list[dict[str, Any]]:
        """Photographs to the planned target size (image bilinear with anti-aliasing, label nearest);
        none at full resolution. Invertible: predictions go back to each image's own size."""
        if self.target_size is None:
            return []
        modes, smooth = ["bilinear", "nearest"][: len(keys)], [True, False][: len(keys)]
        one = len(keys) == 1
        return [{"_target_": "Resized", "keys": keys[0] if one else keys, "spatial_size": self.target_size,
                 "mode": modes[0] if one else modes, "anti_aliasing": smooth[0] if one else smooth}]  # fmt: skip

    def normalize(self) -> dict[str, Any]:
        """The planned intensity normalisation (one scheme for every channel)."""
        schemes = self.plan["normalization"]
        kinds = {entry["scheme"] for entry in schemes}
        if len(kinds) > 1:
            raise ConfigError(
                f"channels with different normalisation schemes ({sorted(kinds)}) are not rendered yet"
            )
        first = schemes[0]
        if first["scheme"] == "zscore":
            return {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": first["nonzero"],
                    "channel_wise": True}  # fmt: skip
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
        """The cached training and validation transforms."""
        keys = ["image", "label"]
        return [
            self.load(keys, medseg_reader=False),
            *self.geometry(keys),
            self.normalize(),
            {"_target_": "EnsureTyped", "keys": keys, "dtype": ["$torch.float32", "$torch.uint8"]},
        ]

    def volume_roi(self) -> list[int]:
        """The training crop in image axes: the patch, and one voxel across the slice axis."""
        assert self.slice_axis is not None
        roi = list(self.roi)
        roi.insert(self.slice_axis, 1)
        return roi

    def crop(self) -> list[dict[str, Any]]:
        """The random training patch (for a 2-D network on volumes: slices across the slice axis)."""
        keys = ["image", "label"]
        if self.slice_axis is None:
            return [
                {"_target_": "SpatialPadd", "keys": keys, "spatial_size": "@roi_size"},
                {"_target_": "RandSpatialCropd", "keys": keys, "roi_size": "@roi_size", "random_size": False},
            ]
        return [
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

    def random(self) -> list[dict[str, Any]]:
        """The random training transforms: crop, affine, the planned mirroring, intensity."""
        keys = ["image", "label"]
        aug = self.augmentation
        rotate = list(aug["rotate_range"])
        if aug.get("rotate_in_plane_only"):
            coarse = max(range(len(self.spacing)), key=lambda i: self.spacing[i])
            rotate = [rotate[0] if i == coarse else 0.0 for i in range(3)]
        affine = {"_target_": "RandAffined", "keys": keys, "prob": aug["affine_prob"], "rotate_range": rotate,
                  "scale_range": [aug["scale_range"]] * self.dims, "mode": ["bilinear", "nearest"],
                  "padding_mode": "zeros"}  # fmt: skip
        flips = [
            {"_target_": "RandFlipd", "keys": keys, "spatial_axis": a, "prob": 0.5}
            for a in aug["mirror_axes"]
        ]
        return [
            *self.crop(),
            affine,
            *flips,
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

    def sliding_window(self, **extra: Any) -> dict[str, Any]:
        """The planned whole-image inferer: MONAI's sliding window (a 2-D network on volumes: its slices)."""
        if self.slice_axis is not None:
            extra = {"spatial_dim": self.slice_axis, **extra}
        settings = self.inference_settings
        return {
            "_target_": "SlidingWindowInferer" if self.slice_axis is None else "SliceInferer",
            "roi_size": "@roi_size",
            "sw_batch_size": settings["sw_batch_size"],
            "overlap": settings["overlap"],
            "mode": settings["mode"],
            **extra,
        }

    def largest_components(self) -> list[dict[str, Any]]:
        """The learned connected-component step after the argmax, when cross-validation accepted one."""
        c = self.components
        if not c or not (c.get("foreground") or c.get("classes")):
            return []
        return [{"_target_": "medseg.postprocess.LargestComponentsd", "keys": "pred",
                 "foreground": bool(c.get("foreground")), "classes": [int(v) for v in c.get("classes", [])]}]  # fmt: skip

    def one_hot(self, argmax_pred: bool) -> dict[str, Any]:
        """Prediction and label as one-hot channels for the Dice metric."""
        return {"_target_": _ONE_HOT, "keys": ["pred", "label"], "argmax": [argmax_pred, False],
                "num_classes": "@num_classes"}  # fmt: skip

    def class_metrics(self, hd95: bool) -> dict[str, Any]:
        """Dice (and HD95) per foreground class, named by its label."""
        classes = [(value, slug(name)) for value, name in self.labels.items() if value != 0]
        metrics: dict[str, Any] = {
            f"val_dice_{name}": {
                "_target_": "MeanDice",
                "include_background": False,
                "output_transform": f"$medseg.engine.metrics.select_class({value})",
            }  # fmt: skip
            for value, name in classes
        }
        if hd95:
            for value, name in classes:
                metrics[f"val_hd95_{name}"] = {"_target_": "HausdorffDistance", "include_background": False,
                                               "percentile": 95,
                                               "output_transform": f"$medseg.engine.metrics.select_class({value})"}  # fmt: skip
        return metrics

    def datalist(self) -> str:
        return "$medseg.data.dataset.load_datalist(@dataset_dir)"

    def dataset_dir(self) -> str:
        return f"$medseg.data.default_data_dir({self.dataset_folder!r})"

    # -- configs/train.json ----------------------------------------------------------------

    def train_folds(self) -> list[int] | str:
        """The training folds: a rule of the test and validation folds, or the plan's literal list."""
        t = self.training
        if monitor_only(t):
            return list(t["train_folds"])
        return "$[k for k in range(5) if k not in (@test_fold, @val_fold)]"

    def schedule(self) -> dict[str, Any]:
        """The split, the epochs and the optimiser's settings."""
        t = self.training
        epochs = int(t["max_epochs"])
        return {
            "dataset_dir": self.dataset_dir(),
            "test_fold": int(t["test_fold"]),
            "val_fold": int(t["val_fold"]),
            "train_folds": self.train_folds(),
            "datalist": self.datalist(),
            "train_datalist": "$medseg.data.split_folds(@datalist, @train_folds)",
            "val_datalist": "$medseg.data.split_folds(@datalist, @val_fold)",
            "seed": 0,
            "max_epochs": epochs,
            "val_interval": max(1, min(10, epochs // 20)),
            "learning_rate": t["learning_rate"],
            "ema_decay": t["ema_decay"],
            **({} if self.slice_axis is None else {"slices_per_volume": self.slices_per_volume}),
            # volumes per step (a 2-D network on volumes takes slices_per_volume slices of each)
            "batch_size": max(1, int(self.plan["batch_size"]) // self.slices_per_volume),
        }

    def loss(self) -> dict[str, Any]:
        loss = self.plan["loss"]
        definition: dict[str, Any] = {"_target_": "medseg.losses.create_loss", "name": loss["name"],
                                      "num_classes": "@num_classes", "batch": bool(loss["batch"])}  # fmt: skip
        if loss.get("class_weights"):
            definition["class_weights"] = loss["class_weights"]
        return definition

    def optimization(self) -> dict[str, Any]:
        """Network, loss, AdamW and the cosine schedule over the whole run."""
        t = self.training
        return {
            "num_classes": self.num_classes,
            "roi_size": self.roi,
            "network_def": self.network,
            "channels_last": "$not torch.cuda.is_available()" if t["channels_last"] else False,
            "track_meta_in_training": bool(t["track_meta_in_training"]),
            "network": "$medseg.networks.to_channels_last(@network_def.to(@device), @channels_last)",
            "loss": self.loss(),
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
        }

    def train_handlers(self) -> list[dict[str, Any]]:
        return [
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
                "output_transform": _LOSS_OUT,
            },  # fmt: skip
            {
                "_target_": "TensorBoardStatsHandler",
                "log_dir": "$@output_dir + '/tensorboard'",
                "tag_name": "train_loss",
                "output_transform": _LOSS_OUT,
            },  # fmt: skip
        ]

    def train_section(self) -> dict[str, Any]:
        """``train#``: cached data, random transforms, EMA, checkpoints and MONAI's SupervisedTrainer."""
        save_dict = {"model": "@network", "ema": "$@train#ema.averaged", "optimizer": "@optimizer",
                     "lr_scheduler": "@lr_scheduler", "trainer": "@train#trainer"}  # fmt: skip
        checkpoints = "$@output_dir + '/checkpoints'"
        return {
            "deterministic_transforms": self.deterministic(),
            "random_transforms": self.random(),
            "preprocessing": {
                "_target_": "Compose",
                "transforms": "$@train#deterministic_transforms + @train#random_transforms",
            },  # fmt: skip
            "dataset": _cache_dataset("@train_datalist", "@train#preprocessing"),
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
            "postprocessing": {"_target_": "Compose", "transforms": [self.one_hot(argmax_pred=True)]},
            "resume_handler": {
                "_target_": "medseg.engine.ResumeFromLatest",
                "ckpt_dir": checkpoints,
                "enabled": "@resume",
                "map_location": "@device",
                "load_dict": save_dict,
            },  # fmt: skip
            "last_checkpoint": {
                "_target_": "medseg.engine.AtomicCheckpointSaver",
                "save_dir": checkpoints,
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
            "handlers": self.train_handlers(),
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
        }

    def validate_section(self) -> dict[str, Any]:
        """``validate#``: the monitoring fold through the planned sliding window and the EMA weights."""
        network = (
            "$medseg.networks.PadBatch(@train#ema.averaged)" if self.cpu_padding else "$@train#ema.averaged"
        )
        return {
            "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
            "dataset": _cache_dataset("@val_datalist", "@validate#preprocessing"),
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@validate#dataset",
                "batch_size": 1,
                "shuffle": False,
                "num_workers": 0,
            },  # fmt: skip
            "inferer": self.sliding_window(),
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
            "additional_metrics": self.class_metrics(hd95=False),
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": network,
                "inferer": "@validate#inferer",
                "postprocessing": "@validate#postprocessing",
                "key_val_metric": "@validate#key_metric",
                "additional_metrics": "@validate#additional_metrics",
                "val_handlers": "@validate#handlers",
                "amp": "@amp",
            },  # fmt: skip
        }

    def train(self) -> dict[str, Any]:
        """``configs/train.json``."""
        return {
            "imports": _imports(
                "os",
                "torch",
                "monai",
                "ignite",
                "medseg.data",
                "medseg.data.dataset",
                "medseg.engine",
                "medseg.engine.metrics",
                "medseg.networks",
                "medseg",
            ),  # fmt: skip
            "bundle_root": ".",
            "ckpt_dir": "$@bundle_root + '/models'",
            "output_dir": "$@bundle_root + '/runs/train'",
            **self.schedule(),
            "num_workers": "$4 if torch.cuda.is_available() else 0",
            "resume": False,
            "progress": True,
            "amp": "$torch.cuda.is_available()",
            "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
            **self.optimization(),
            "train": self.train_section(),
            "validate": self.validate_section(),
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

    # -- configs/evaluate.json -------------------------------------------------------------

    def evaluation_postprocessing(self) -> dict[str, Any]:
        """Softmax, back to each case's original grid, the learned components, one-hot for the metrics."""
        components = self.largest_components()
        argmax = (
            [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}, *components] if components else []
        )
        return {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                self.evaluation_invert(),
                *argmax,
                self.one_hot(argmax_pred=not components),
            ],
        }

    def evaluation_invert(self) -> dict[str, Any]:
        """Prediction (and label) back to each case's original grid; resized photographs keep their
        original label (:meth:`evaluation_preprocessing`), so only the prediction is resized back."""
        resized = self.target_size is not None
        return {"_target_": "Invertd", "keys": ["pred"] if resized else ["pred", "label"],
                "transform": "@validate#preprocessing", "orig_keys": "image",
                "nearest_interp": False if resized else [False, True], "to_tensor": True}  # fmt: skip

    def evaluation_preprocessing(self) -> dict[str, Any]:
        """``validate#preprocessing`` of evaluate.json for resized photographs: the image at the planned
        size, the label at the image's own size (Dice on each image's own size); others: none."""
        if self.target_size is None:
            return {}
        keys = ["image", "label"]
        transforms = [
            self.load(keys, medseg_reader=False),
            {"_target_": "EnsureChannelFirstd", "keys": keys},
            *self.resize(["image"]),
            self.normalize(),
            {"_target_": "EnsureTyped", "keys": keys, "dtype": ["$torch.float32", "$torch.uint8"]},
        ]
        return {"validate#preprocessing": {"_target_": "Compose", "transforms": transforms}}

    def metrics_saver(self) -> list[dict[str, Any]]:
        return [
            {"_target_": "StatsHandler", "iteration_log": False},
            {
                "_target_": "MetricsSaver",
                "save_dir": "@output_dir",
                "metrics": "*",
                "metric_details": "*",
                "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
                "summary_ops": "*",
            },  # fmt: skip
        ]

    def evaluate(self) -> dict[str, Any]:
        """``configs/evaluate.json``: merged over train.json, the weights on a fold, on original grids."""
        return {
            "output_dir": "$@bundle_root + '/runs/eval'",
            "validate#evaluator#network": "@network",
            **self.evaluation_preprocessing(),
            "validate#postprocessing": self.evaluation_postprocessing(),
            # a named key, so that ``medseg evaluate --weights`` overrides ``checkpointloader#load_path``
            "checkpointloader": _checkpoint_loader("$@ckpt_dir + '/model.pt'"),
            "validate#handlers": ["@checkpointloader", *self.metrics_saver()],
            "validate#additional_metrics": self.class_metrics(hd95=True),
            "initialize": ["$monai.utils.set_determinism(seed=@seed)"],
            "run": ["$@validate#evaluator.run()"],
        }

    # -- configs/inference.json ------------------------------------------------------------

    def inference_head(self) -> dict[str, Any]:
        """Where inference reads and writes: the test fold's images by default, any ``--datalist``."""
        return {
            "imports": _imports(
                "os", "numpy", "torch", "monai", "medseg.data", "medseg.data.dataset", "medseg.io", "medseg"
            ),  # fmt: skip
            "bundle_root": ".",
            "output_dir": "$@bundle_root + '/runs/inference'",
            "output_ext": ".png" if self.png else ".nii.gz",
            "output_dtype": "$numpy.uint8",
            "output_postfix": "seg",
            "separate_folder": False,
            "dataset_dir": self.dataset_dir(),
            "datalist": f"$[item['image'] for item in medseg.data.split_folds({self.datalist()[1:]}, "
            f"{int(self.training['test_fold'])})]",
            "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
            "amp": "$torch.cuda.is_available()",
            "num_classes": self.num_classes,
            "roi_size": self.roi,
        }

    def inference_network(self) -> dict[str, Any]:
        """``network_def`` and ``network`` of inference.json."""
        return {"network_def": self.network, "network": "$@network_def.to(@device)"}

    def inference_inferer(self) -> dict[str, Any]:
        return self.sliding_window(sw_device="@device", device="cpu")

    def inference_postprocessing(self) -> dict[str, Any]:
        """Softmax, back to the input's grid, argmax, the learned components, and the written file."""
        return {
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
                *self.largest_components(),
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
        }

    def inference_weights(self) -> dict[str, Any]:
        """How inference.json loads the weights (``checkpointloader``, run by ``initialize``)."""
        return {
            "checkpointloader": _checkpoint_loader("$@bundle_root + '/models/model.pt'"),
            "initialize": ["$monai.utils.set_determinism(seed=0)", "$@checkpointloader(@evaluator)"],
        }

    def inference(self) -> dict[str, Any]:
        """``configs/inference.json``: plain ``monai.bundle run`` on a datalist of images."""
        preprocessing = [
            self.load(["image"], medseg_reader=True),
            *self.geometry(["image"]),
            self.normalize(),
            {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
        ]
        return {
            **self.inference_head(),
            **self.inference_network(),
            "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
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
            "inferer": self.inference_inferer(),
            "postprocessing": self.inference_postprocessing(),
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
            **self.inference_weights(),
            "run": ["$@evaluator.run()"],
        }

    # -- configs/multi_gpu_train.json ------------------------------------------------------

    def multi_gpu(self) -> dict[str, Any]:
        """``configs/multi_gpu_train.json``: train.json as DDP (nccl on GPUs, gloo on CPU), rank 0 writes."""
        return {
            "imports": [
                *_imports("os", "torch"),
                "$import torch.distributed as dist",
                *_imports(
                    "monai",
                    "ignite",
                    "medseg.data",
                    "medseg.data.dataset",
                    "medseg.engine",
                    "medseg.engine.metrics",
                    "medseg",
                ),
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

    # -- configs/metadata.json -------------------------------------------------------------

    def description(self) -> str:
        ds = self.dataset
        network_name = self.network["_target_"].rsplit(".", 1)[-1]
        return (
            f"A {self.dims}-D {network_name} planned by medseg plan from {ds['name']} "
            f"({ds['num_cases']} labelled cases) and trained on folds 2-4 of medseg's fixed 5-fold split "
            "(fold 1 monitors, fold 0 is the test fold). Research use only, not for diagnosis."
        )

    def image_format(self) -> dict[str, Any]:
        """metadata.json's input: channels, the smallest valid shape and the suitability limits."""
        limits = self.plan["suitability"]
        # twice the total stride: the deepest feature map of a one-unit input keeps 2 voxels per axis,
        # which instance norm needs (monai.bundle verify_net_in_out feeds n = 1)
        stride = total_stride(self.plan["network"])
        image: dict[str, Any] = {
            "type": "image",
            "format": "RGB"
            if "rgb_to_0_1" in {e["scheme"] for e in self.plan["normalization"]}
            else "magnitude",
            "num_channels": len(self.channels),
            "spatial_shape": [f"{2 * d}*n" for d in stride],
            "dtype": "float32",
            "value_range": [],
            "is_patch_data": True,
            "channel_def": {str(i): name for i, name in enumerate(self.channels)},
            "plausible_extent_mm": limits["plausible_extent_mm"],
            "plausible_spacing_mm": limits["plausible_spacing_mm"],
            "tta_flip_axes": limits["tta_flip_axes"],
        }
        if "modality" in limits:
            image["modality"] = limits["modality"]
        return image

    def metadata(self) -> dict[str, Any]:
        """``configs/metadata.json``: versions, the training record's figures, the data's formats."""
        versions = self.plan.versions
        record = self.record
        image = self.image_format()
        labels = {str(k): v for k, v in self.labels.items()}
        ds = self.dataset
        label_text = ", ".join(f"{k} {v}" for k, v in labels.items())
        pred = {"type": "image", "format": "segmentation", "num_channels": self.num_classes,
                "spatial_shape": image["spatial_shape"], "dtype": "float32", "value_range": [],
                "is_patch_data": True, "channel_def": labels,
                **({"segment_codes": self.inputs["concepts"]} if self.inputs.get("concepts") else {})}  # fmt: skip
        metadata = {
            "schema": SCHEMA,
            "version": record["version"] if record else "0.1.0",
            "changelog": dict(record["changelog"]) if record else {"0.1.0": "generated by medseg plan"},
            "monai_version": versions["monai"],
            "pytorch_version": versions["torch"],
            "numpy_version": versions["numpy"],
            "required_packages_version": {
                k: versions[k] for k in ("medseg", "nibabel", "pytorch-ignite", "tensorboard")
            },
            "supported_apps": {},
            "name": self.inputs["name"],
            "task": f"Segmentation of {', '.join(v for k, v in labels.items() if k != '0')} ({ds['name']})",
            "description": self.description(),
            "authors": "medseg developers",
            "copyright": "Copyright (c) medseg developers",
            "data_source": "; ".join(
                x for x in (ds["name"], ds.get("reference", ""), ds.get("licence", "")) if x
            ),
            "data_type": "png" if self.png else "nifti",
            "image_classes": ", ".join(f"channel {k}: {v}" for k, v in image["channel_def"].items()),
            "label_classes": label_text,
            "pred_classes": label_text,
            "eval_metrics": dict(record["eval_metrics"]) if record else {},
            "intended_use": "Research use only, not for diagnosis",
            "references": [x for x in (ds.get("reference", ""),) if x],
            "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}},
        }
        metadata.update(self.inputs.get("metadata") or {})  # recorded overrides of the descriptive text
        return metadata

    # -- docs/README.md and LICENSE --------------------------------------------------------

    def _epochs_said(self) -> str:
        """The protocol's epochs: the planned schedule, and the recorded run's where it differs (a
        shipped run stopped by ``--max-minutes``, or warm-started and run in parts)."""
        planned_epochs = self.training["max_epochs"]
        record = self.record
        if not record or int(record["epochs"]) == int(planned_epochs):
            return f"for a fixed {planned_epochs} epochs"
        return (
            f"on a fixed schedule planned for {planned_epochs} epochs (the shipped weights trained "
            f"{record['epochs']}: see Training and results)"
        )

    def results(self) -> list[str]:
        """The README's section on the bundle's own training run and its test-fold Dice."""
        record = self.record
        if not record:
            return [
                "## Training and results",
                "Not trained yet: `models/model.pt` comes from running `configs/train.json`; record the run in "
                f"`{RECORD_FILE}` and re-render.",
                "",
            ]
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
            f"Test fold {self.training['test_fold']} ({record.get('test_cases', '?')} cases), Dice on each case's "
            "original grid, measured from the shipped weights by `medseg evaluate BUNDLE --fold 0`:",
            "",
            *dice_table(record.get("dice", {}), record["mean_dice"]),
            "",
        ]

    def readme(self) -> str:
        """``docs/README.md``: data, protocol, every planned value with its rule, results, commands."""
        ds = self.dataset
        rows = []
        for key in self.plan.entries:
            value = json.dumps(self.plan[key]).replace("|", "\\|")
            rule = self.plan.rule(key).replace("|", "\\|")
            rows.append(f"| `{key}` | `{value}` | {rule} |")
        t = self.training
        name = self.inputs["name"]
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
                f"channels {', '.join(self.channels)}, labels "
                f"{', '.join(f'{k} {v}' for k, v in self.labels.items())}.",
                f"Licence of the data: {ds.get('licence') or 'not stated in dataset.json'}.",
                *([f"Reference: {ds['reference']}."] if ds.get("reference") else []),
                "",
                "## Protocol",
                "medseg's fixed split: sort the case ids, fold k holds the cases whose index % 5 == k. Fold "
                f"{t['test_fold']} is the test fold: no decision (schedule, checkpoint, early stopping) looks at "
                f"it. The network trains on folds {', '.join(map(str, t['train_folds']))} "
                f"{self._epochs_said()}, fold {t['val_fold']} is validated for monitoring"
                f"{' only (it is trained on too)' if monitor_only(t) else ''}, and the final EMA weights are kept "
                "as `models/model.pt`. Accuracy figures are measured on fold 0 only.",
                "",
                "## Plan",
                "| value | planned | rule |",
                "|---|---|---|",
                *rows,
                "",
                *self.results(),
                *cv_section(self.cv, self.labels),
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

    def license(self) -> str:
        """``LICENSE``: the code's licence, and the weights under the data's terms."""
        ds = self.dataset
        return (
            "Code and configuration: Apache License 2.0 (see the medseg repository).\n\n"
            f"Model weights (models/model.pt), once trained, derive from {ds['name']}"
            + (f" ({ds['reference']})" if ds.get("reference") else "")
            + f"; the data's licence: {ds.get('licence') or 'not stated in dataset.json'}. The weights are shared "
            "under the data's terms.\n\nResearch use only, not for diagnosis.\n"
        )


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
        minutes = "-" if member.get("minutes") is None else f"{member['minutes']:.1f}"
        cells = " | ".join(f"{member['dice'][n]:.4f}" for n in names)
        rows.append(
            f"| {fold} | {member['cases']} | {member['epochs']} | {minutes} | {cells} | {member['mean_dice']:.4f} |"
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
