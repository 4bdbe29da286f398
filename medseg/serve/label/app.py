"""The MONAI Label app that serves medseg bundles (imported in the MONAI Label venv only).

The app template ``medseg/serve/label/recipe/main.py`` (copied into the workdir by
:func:`medseg.serve.workdir.prepare_workdir`) imports :class:`MedsegLabelApp`; MONAI Label finds it
there as the app class. Differences from MONAI Label's stock ``monaibundle`` app:

* models are the bundle folders under ``<app>/model/`` (``--conf models a,b`` selects some);
  nothing is downloaded from a model zoo;
* :class:`MedsegInferTask` builds the bundle's transforms under a lock (MONAI's ConfigParser is
  not thread safe) so inferences may run in several threads, loads weights strictly, and
  uses the serving version (``model.pt`` or a promoted ``models/model-ftNNN-<time>.pt``) unless the
  request names one (``model_filename``);
* :class:`MedsegTrainTask` runs the bundle's own ``train.json`` with the datastore's labelled
  images outside the recorded validation part, writes its checkpoints into a run folder of the
  served copy and publishes the result as a new version file (``models/model.pt`` is never
  overwritten); the version serves only if its Dice on the validation part is not below the
  serving version's (:mod:`medseg.serve.label.versions`);
* the local datastore never writes through a link into the mirrored studies, and the DICOMweb
  datastore converts series with medseg's strict loader (no dcmqi download, no ITK conversion),
  stores final labels as DICOM SEGs written by medseg and reads them back with medseg's reader.

Written against monailabel 0.8.5. Where its classes expose no public accessor (the task tables
of the app, the DICOMweb client of the datastore) this module wraps them, in the adapter methods
of :class:`MedsegLabelApp` (``infer_names``, ``trainer_names``, ``infer_task``) and
:class:`MedsegDICOMWebDatastore` (``client``, ``fetch_by_frame``, ``store_instances``); the ASGI app
and the inference workers use only those. The subclasses here also override protected hooks of
their monailabel 0.8.5 bases (``_get_network``, ``_partition_datalist``, ``_update_overrides``,
the local datastore's ``_datastore`` / ``_to_id`` / ``_filename``): re-check them when monailabel
is upgraded.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask

import medseg
from medseg.bundle.core import open_bundle
from medseg.bundle.loader import is_ensemble, load_weights, weight_files
from medseg.io.atomic import atomic_copy
from medseg.serve.label.versions import (
    VERSION_FILE,
    VersionStore,
    bundle_test_fold,
    mean_dice,
    should_promote,
)

__all__ = [
    "MedsegLabelApp",
    "MedsegInferTask",
    "MedsegTrainTask",
    "MedsegLocalDatastore",
    "MedsegDICOMWebDatastore",
    "weight_versions",
    "latest_weights",
    "resolve_weights",
]

logger = logging.getLogger(__name__)

LATEST = "latest"  # the option name clients know: the serving version (see medseg.serve.label.versions)


# ---------------------------------------------------------------------------------------------
# versioned weights of a served bundle copy


def weight_versions(bundle_path: str | os.PathLike) -> list[Path]:
    """Fine-tuned weight files of a served bundle, oldest first."""
    return VersionStore(bundle_path).fine_tuned()


def latest_weights(bundle_path: str | os.PathLike) -> Path:
    """The serving weights: the shipped ``models/model.pt`` until a fine-tuned version is promoted."""
    return VersionStore(bundle_path).serving_path_file()


def resolve_weights(bundle_path: str | os.PathLike, name: Any) -> Path:
    """The weights file a request asks for: ``latest`` (the serving version, default), ``model.pt`` or a
    version file name.

    Raises:
        MONAILabelException(INVALID_INPUT): an unknown name, or one that is not a plain file name.
    """
    if isinstance(name, (list, tuple)):  # the client sent the option list back unchanged
        name = name[0] if name else LATEST
    if name in (None, "", LATEST, "serving"):
        return latest_weights(bundle_path)
    name = str(name)
    models = Path(bundle_path) / "models"
    if name == "model.pt" or VERSION_FILE.match(name):
        path = models / name
        if path.is_file():
            return path
    choices = ", ".join([LATEST, "model.pt"] + [p.name for p in weight_versions(bundle_path)])
    raise MONAILabelException(
        MONAILabelError.INVALID_INPUT,
        f"model_filename {name!r} is not a weights file of this model; choose one of: {choices}",
    )


# ---------------------------------------------------------------------------------------------
# tasks


class _MemberConstants(BundleConstants):
    """An ensemble has no models/model.pt: MONAI Label checks for a member's weights file instead."""

    def __init__(self, filename: str) -> None:
        super().__init__()
        self._filename = filename

    def model_pytorch(self) -> str:
        return self._filename


class MedsegInferTask(BundleInferTask):
    """Bundle inference that is safe to run from several threads and knows weight versions."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        self._config_lock = threading.RLock()
        self._network_lock = threading.Lock()
        files = weight_files(open_bundle(path)) if is_ensemble(open_bundle(path)) else []
        if files:  # MONAI Label builds network_def only when models/<model_pytorch()> exists
            kwargs.setdefault("const", _MemberConstants(files[0].name))
        super().__init__(path, conf, load_strict=True, **kwargs)
        if self.valid:
            self.label_names = open_bundle(self.bundle_path).labels
            # requests start from this config: use the newest weights unless they name others (the
            # stock list here, sorted by name length, would always pick model.pt)
            self._config["model_filename"] = LATEST

    @property
    def ensemble(self) -> bool:
        """A cross-validation ensemble: its network_def loads one weights file per member itself."""
        return is_ensemble(open_bundle(self.bundle_path))

    def is_valid(self) -> bool:
        if self.ensemble:
            return bool(self.valid)
        return bool(self.valid) and latest_weights(self.bundle_path).is_file()

    def get_path(self, validate: bool = True) -> str | None:
        if self.ensemble:
            return str(Path(self.bundle_path) / "plans" / "ensemble.json")
        path = latest_weights(self.bundle_path)
        return str(path) if path.is_file() or not validate else None

    def config(self) -> dict[str, Any]:
        config = dict(self._config)
        config["model_filename"] = [LATEST, "model.pt"] + [
            p.name for p in reversed(weight_versions(self.bundle_path))
        ]
        return config

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["bundle"] = os.path.basename(self.bundle_path)
        info["label_names"] = {str(k): v for k, v in self.label_names.items()}
        if self.ensemble:
            info["weights"] = "ensemble"
            info["members"] = list(getattr(self.network, "names", []))
        else:
            info["weights"] = latest_weights(self.bundle_path).name
        return info

    # MONAI's ConfigParser resolves references with shared state: build transforms one at a time
    def pre_transforms(self, data=None):
        with self._config_lock:
            return super().pre_transforms(data)

    def post_transforms(self, data=None):
        with self._config_lock:
            return super().post_transforms(data)

    def inferer(self, data=None):
        with self._config_lock:
            return super().inferer(data)

    def _get_network(self, device, data):
        if self.ensemble:  # the members' weights were loaded when network_def was built
            if data is not None:
                data["medseg_weights"] = "ensemble"
            with self._network_lock:
                key = (str(device), "ensemble")
                if key not in self._networks:
                    self._networks[key] = (copy.deepcopy(self.network).to(device).eval(), None)
                return self._networks[key][0]
        path = resolve_weights(self.bundle_path, (data or {}).get("model_filename"))
        stat = path.stat()
        key = (str(device), str(path))
        stamp = (stat.st_mtime_ns, stat.st_size)
        if data is not None:
            data["medseg_weights"] = path.name  # reported with the result (see writer)
        with self._network_lock:
            cached = self._networks.get(key)
            if cached is not None and cached[1] == stamp:
                return cached[0]
            logger.info("loading %s weights %s on %s", os.path.basename(self.bundle_path), path.name, device)
            network = load_weights(copy.deepcopy(self.network), path, device, strict=True)
            network.eval()
            # keep one network per device: the version just loaded
            self._networks = {k: v for k, v in self._networks.items() if k[0] != str(device)}
            self._networks[key] = (network, stamp)
            return network

    def writer(self, data, extension=None, dtype=None):
        result_file, result_json = super().writer(data, extension, dtype)
        result_json["weights"] = data.get("medseg_weights", "")
        result_json["bundle"] = os.path.basename(self.bundle_path)
        return result_file, result_json


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


# ---------------------------------------------------------------------------------------------
# datastores


class MedsegLocalDatastore(LocalDatastore):
    """Local datastore whose images may be links into the studies: writes replace links, never follow them."""

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        _, ext = self._to_id(os.path.basename(image_filename))
        target = os.path.join(self._datastore.image_path(), self._filename(image_id or _, ext))
        if os.path.islink(target):
            os.unlink(target)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        _, ext = self._to_id(os.path.basename(label_filename))
        target = os.path.join(self._datastore.label_path(label_tag), self._filename(image_id, ext))
        if os.path.islink(target):
            os.unlink(target)
        return super().save_label(image_id, label_filename, label_tag, label_info)


class MedsegDICOMWebDatastore(DICOMWebDatastore):
    """DICOMweb datastore that converts series with medseg's strict loader and stores SEGs back.

    Args:
        client: the DICOMweb client (kept as :attr:`client`: monailabel 0.8.5 keeps it private).
        search_filter: QIDO-RS filter of the series listed as images.
        cache_path: where series are downloaded and converted.
        fetch_by_frame: fetch instances frame by frame (kept as :attr:`fetch_by_frame`).
        convert_to_nifti: as in :class:`DICOMWebDatastore`.
        seg_bundle_path: the served bundle whose label names and codes a submitted label's SEG
            carries (and whose names map a SEG's segments back to label values).
    """

    def __init__(
        self,
        client: Any,
        search_filter: dict[str, Any],
        cache_path: str | None = None,
        fetch_by_frame: bool = False,
        convert_to_nifti: bool = True,
        seg_bundle_path: str | None = None,
    ) -> None:
        self.seg_bundle_path = seg_bundle_path
        super().__init__(
            client=client,
            search_filter=search_filter,
            cache_path=cache_path,
            fetch_by_frame=fetch_by_frame,
            convert_to_nifti=convert_to_nifti,
        )
        self.client = client
        self.fetch_by_frame = fetch_by_frame

    def store_instances(self, paths: list[str]) -> None:
        """Store DICOM files (e.g. a SEG written for a request) on the DICOMweb server with STOW-RS."""
        import pydicom

        self.client.store_instances(datasets=[pydicom.dcmread(p) for p in paths])

    def _series_lock(self, image_id: str):
        """A lock on one series across threads and worker processes (a lock file beside it)."""
        from filelock import FileLock

        return FileLock(os.path.join(self._datastore.image_path(), f".{image_id}.lock"))

    def series_dir(self, image_id: str) -> str:
        """Folder of the downloaded instances of a series (fetched once, completely, on first use)."""
        from monailabel.datastore.utils.dicom import dicom_web_download_series

        image_dir = os.path.realpath(os.path.join(self._datastore.image_path(), image_id))
        with self._series_lock(image_id):
            if not os.path.isdir(image_dir) or not os.listdir(image_dir):
                # download beside it and rename: a failed or concurrent fetch never leaves half a series
                part = tempfile.mkdtemp(prefix=f".{image_id}.part-", dir=os.path.dirname(image_dir))
                try:
                    dicom_web_download_series(None, image_id, part, self.client, self.fetch_by_frame)
                    if os.path.isdir(image_dir):
                        shutil.rmtree(image_dir)
                    os.replace(part, image_dir)
                finally:
                    shutil.rmtree(part, ignore_errors=True)
        return image_dir

    # -- labels: DICOM SEG written by medseg, read back with medseg's reader (no dcmqi)
    def save_label(
        self,
        image_id: str,
        label_filename: str,
        label_tag: str,
        label_info: dict[str, Any],
        label_id: str = "",
    ) -> str:
        """Store a final label as a DICOM SEG on the DICOMweb server (STOW-RS) and keep it in the cache.

        The label (NIfTI on the image's grid, checked by :mod:`medseg.serve.label.labels`) becomes a
        SEG written by medseg with the bundle's label names and codes, referencing the source series;
        other tags (e.g. a client's drafts) stay in the local cache only, as in stock MONAI Label.
        """
        from medseg.serve.label.seg_output import label_file_to_seg

        self.get_image_uri(image_id)
        info = dict(label_info or {})
        if label_tag == DefaultLabelTag.FINAL:
            if not self.seg_bundle_path:
                raise MONAILabelException(
                    MONAILabelError.APP_INIT_ERROR, "no bundle to code the label's SEG with"
                )
            with tempfile.TemporaryDirectory(prefix="medseg-label-seg-") as tmp:
                seg_path = os.path.join(tmp, "label-seg.dcm")
                uids = label_file_to_seg(
                    label_filename,
                    self.series_dir(image_id),
                    seg_path,
                    bundle_path=self.seg_bundle_path,
                    corrected=True,
                )
                self.store_instances([seg_path])
            info["SeriesInstanceUID"] = uids["series_instance_uid"]
            logger.info(
                "label of %s stored on the DICOMweb server as SEG series %s",
                image_id,
                uids["series_instance_uid"],
            )
        return LocalDatastore.save_label(self, image_id, label_filename, label_tag, info)

    def _seg_labels(self) -> dict[str, str]:
        """The newest label SEG series of each listed image series: ``{image series uid: SEG series uid}``.

        A SEG is a label when it references a listed series and is not a model's output (medseg's
        inference SEGs are marked AUTOMATIC; those are results, not ground truth).
        """
        from pydicom.dataset import Dataset

        images = set(self.list_images())
        found: dict[str, tuple[str, str]] = {}
        for item in self.client.search_for_series(search_filters={"Modality": "SEG"}):
            seg = Dataset.from_json(item)
            study, series = str(seg.StudyInstanceUID), str(seg.SeriesInstanceUID)
            meta = Dataset.from_json(self.client.retrieve_series_metadata(study, series)[0])
            referenced = meta.get("ReferencedSeriesSequence")
            if not referenced:
                continue
            image = str(referenced[0].SeriesInstanceUID)
            algorithm_types = {
                str(s.get("SegmentAlgorithmType", "")) for s in meta.get("SegmentSequence", [])
            }
            if image not in images or (
                str(meta.get("Manufacturer", "")) == "medseg" and algorithm_types == {"AUTOMATIC"}
            ):
                continue
            stamp = f"{meta.get('ContentDate', '') or meta.get('SeriesDate', '')}{meta.get('ContentTime', '') or meta.get('SeriesTime', '')}"
            if image not in found or stamp >= found[image][0]:
                found[image] = (stamp, series)
        return {image: series for image, (_, series) in found.items()}

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        return sorted(self._seg_labels())

    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        if label_tag != DefaultLabelTag.FINAL or not image_id:
            return LocalDatastore.get_label_uri(self, label_id, label_tag)
        return self._label_from_seg(image_id, label_id)

    def _label_from_seg(self, image_id: str, seg_uid: str) -> str:
        """The label map of a SEG series as NIfTI on its image's grid, in the cache (converted once)."""
        from monailabel.datastore.utils.dicom import dicom_web_download_series

        from medseg.serve.label.labels import as_image_nifti, seg_to_labelmap

        final = DefaultLabelTag.FINAL.value
        label_nii = os.path.realpath(os.path.join(self._datastore.label_path(final), f"{image_id}.nii.gz"))
        current = LocalDatastore.get_label_info(self, image_id, final) if os.path.exists(label_nii) else {}
        if os.path.exists(label_nii) and current.get("SeriesInstanceUID") == seg_uid:
            return label_nii
        image_nii = self.get_image_uri(image_id)
        with tempfile.TemporaryDirectory(prefix="medseg-seg-") as tmp:
            dicom_web_download_series(None, seg_uid, tmp, self.client, self.fetch_by_frame)
            seg_files = sorted(str(p) for p in Path(tmp).rglob("*") if p.is_file())
            names = open_bundle(self.seg_bundle_path).labels if self.seg_bundle_path else {}
            label = seg_to_labelmap(seg_files[0], self.series_dir(image_id), names)
            converted = as_image_nifti(label, image_nii, os.path.join(tmp, "label.dcm"))
            LocalDatastore.save_label(self, image_id, converted, final, {"SeriesInstanceUID": seg_uid})
        logger.info("label of %s read from SEG series %s", image_id, seg_uid)
        return label_nii

    def _download_labeled_data(self):
        labels = self._seg_labels()
        final = DefaultLabelTag.FINAL.value
        for stale in set(LocalDatastore.get_labeled_images(self)) - set(labels):
            logger.info("label of %s is no longer on the DICOMweb server: removed from the cache", stale)
            LocalDatastore.remove_label(self, stale, final)
        for image_id, seg_uid in labels.items():
            self._label_from_seg(image_id, seg_uid)

    def get_image_uri(self, image_id: str) -> str:
        from medseg.io import load_image, save_nifti

        image_dir = self.series_dir(image_id)
        image_nii_gz = os.path.realpath(os.path.join(self._datastore.image_path(), f"{image_id}.nii.gz"))
        with self._series_lock(image_id):
            if not os.path.exists(image_nii_gz):
                image = load_image(image_dir, series_uid=image_id, dtype=None)
                with tempfile.TemporaryDirectory(prefix="medseg-dicomweb-") as tmp:
                    converted = os.path.join(tmp, f"{image_id}.nii.gz")
                    save_nifti(image, converted)
                    LocalDatastore.add_image(self, image_id, converted, self._dicom_info(image_id))
        return image_nii_gz


# ---------------------------------------------------------------------------------------------
# the app


class MedsegLabelApp(MONAILabelApp):
    """Serves every bundle under ``<app>/model/`` (or those of ``--conf models a,b``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = Path(app_dir) / "model"
        available = (
            sorted(p.name for p in self.model_dir.iterdir() if (p / "configs" / "metadata.json").is_file())
            if self.model_dir.is_dir()
            else []
        )
        wanted = [m.strip() for m in conf.get("models", "").split(",") if m.strip()]
        unknown = [m for m in wanted if m not in available]
        if unknown:
            raise MONAILabelException(
                MONAILabelError.APP_INIT_ERROR,
                f"no bundle {', '.join(unknown)} under {self.model_dir} (available: {', '.join(available) or 'none'})",
            )
        self.bundle_names = wanted or available
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="medseg",
            description="medseg MONAI bundles (research use only, not for diagnosis)",
            version=medseg.__version__,
        )

    # adapter: monailabel 0.8.5 keeps the app's tasks in `_infers` / `_trainers` and offers no public
    # accessor by name (MONAILabelApp.info() builds every task's info); the ASGI app and the
    # inference workers go through these three methods only
    def infer_names(self) -> list[str]:
        """Names of the served models (bundles with inference configs and weights)."""
        return sorted(self._infers)

    def trainer_names(self) -> list[str]:
        """Names of the models that ``POST /train/{model}`` can fine-tune."""
        return sorted(self._trainers)

    def infer_task(self, name: str) -> MedsegInferTask | None:
        """The inference task of a served model, or None for an unknown name."""
        task = self._infers.get(name)
        return task if isinstance(task, MedsegInferTask) else None

    def label_names(self) -> dict[int, str]:
        """Label values and names of the served bundles (the first bundle names a shared value)."""
        names: dict[int, str] = {}
        for name in self.bundle_names:
            for value, label in open_bundle(self.model_dir / name).labels.items():
                names.setdefault(value, label)
        return names or {0: "background"}

    def label_values(self) -> set[int]:
        """Values a submitted label may hold: those of the served bundles, background included."""
        return set(self.label_names()) | {0}

    def version_store(self, name: str) -> VersionStore:
        """The weights versions of a served model.

        Raises:
            KeyError: not a served model (the message names the served ones).
        """
        if name not in self.bundle_names:
            raise KeyError(
                f"unknown model {name!r}; this server has: {', '.join(self.bundle_names) or 'none'}"
            )
        return VersionStore(self.model_dir / name)

    def init_infers(self):
        infers = {}
        for name in self.bundle_names:
            task = MedsegInferTask(str(self.model_dir / name), self.conf)
            if task.is_valid():
                infers[name] = task
            else:
                logger.error("bundle %s cannot be served: no inference config or weights", name)
        return infers

    def init_trainers(self):
        trainers = {}
        for name in self.bundle_names:
            if is_ensemble(open_bundle(self.model_dir / name)):
                continue  # an ensemble is retrained member by member (medseg train --cv), not here
            task = MedsegTrainTask(str(self.model_dir / name), self.conf)
            if task.is_valid():
                trainers[name] = task
        return trainers

    def init_strategies(self):
        return {"random": Random(), "first": First()}

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return MedsegLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def _init_dicomweb_datastore(self):
        from dicomweb_client.session_utils import create_session_from_user_pass
        from monailabel.datastore.dicom import DICOMwebClientX

        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(
                settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD
            )
        client = DICOMwebClientX(
            url=self.studies,
            session=session,
            qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX,
            stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        cache_path = (settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
        return MedsegDICOMWebDatastore(
            seg_bundle_path=str(self.model_dir / self.bundle_names[0]) if self.bundle_names else None,
            client=client,
            search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            cache_path=cache_path or None,
            fetch_by_frame=settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
            convert_to_nifti=True,
        )

    def _download_dcmqi_tools(self):
        # DICOM SEG is written with highdicom (medseg.serve.label.seg_output); nothing to download
        return None
