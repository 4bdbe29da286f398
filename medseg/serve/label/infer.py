"""medseg's inference task for MONAI Label: bundle inference that knows weight versions (MONAI Label venv only).

:class:`MedsegInferTask` differs from MONAI Label's stock ``BundleInferTask`` (monailabel 0.8.5): it
builds the bundle's transforms under a lock (MONAI's ConfigParser is not thread safe) so inferences
may run in several threads, loads weights strictly, and uses the serving version (``model.pt`` or a
promoted ``models/model-ftNNN-<time>.pt``) unless the request names one (``model_filename``); an
ensemble bundle loads its members' weights when its network is built. The network runs in the
precision ``medseg serve --precision`` asks for (:mod:`medseg.precision`: under ``auto``, bf16
autocast on a CPU with bf16 units), reported with every result. It overrides the protected
hook ``_get_network`` of its base: re-check it when monailabel is upgraded.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from pathlib import Path
from typing import Any

from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask

from medseg.bundle.core import open_bundle
from medseg.bundle.loader import is_ensemble, load_weights, weight_files
from medseg.precision import resolve_precision, with_precision
from medseg.render.records import ENSEMBLE_RECORD
from medseg.serve.label.versions import VERSION_FILE, VersionStore

__all__ = ["LATEST", "MedsegInferTask", "latest_weights", "resolve_weights", "weight_versions"]

logger = logging.getLogger("medseg.serve.label.app")

LATEST = "latest"  # the option name clients know: the serving version (see medseg.serve.label.versions)


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
            return str(Path(self.bundle_path) / ENSEMBLE_RECORD)
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

    def _precision(self, device, data) -> Any:
        """The precision of this server's inference (``medseg serve --precision``): bf16 autocast of the
        network on a CPU with bf16 units under ``auto``; on CUDA the bundle's own AMP setting rules."""
        precision = resolve_precision(None, device)
        if data is not None:
            data["medseg_precision"] = precision.dtype if precision.device == "cpu" else "bundle amp"
        return precision if precision.device == "cpu" and precision.reduced else None

    def _get_network(self, device, data):
        precision = self._precision(device, data)
        if self.ensemble:  # the members' weights were loaded when network_def was built
            if data is not None:
                data["medseg_weights"] = "ensemble"
            with self._network_lock:
                key = (str(device), "ensemble")
                if key not in self._networks:
                    network = copy.deepcopy(self.network).to(device).eval()
                    self._networks[key] = (with_precision(network, precision) if precision else network, None)
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
            if precision is not None:  # stitching, softmax and argmax stay fp32 outside the wrapper
                network = with_precision(network, precision)
            # keep one network per device: the version just loaded
            self._networks = {k: v for k, v in self._networks.items() if k[0] != str(device)}
            self._networks[key] = (network, stamp)
            return network

    def writer(self, data, extension=None, dtype=None):
        result_file, result_json = super().writer(data, extension, dtype)
        result_json["weights"] = data.get("medseg_weights", "")
        result_json["precision"] = data.get("medseg_precision", "fp32")
        result_json["bundle"] = os.path.basename(self.bundle_path)
        return result_file, result_json
