"""Inference worker processes of the medseg MONAI Label server (MONAI Label venv only).

``medseg.serve.label.asgi`` runs every inference in a pool of worker processes (spawned, each with its
own MONAI Label app instance built from the same settings), not in threads of the server: a
thread doing inference holds Python's GIL in its transforms, and on a busy machine the operating
system can deschedule it while it holds it, so the event loop (``/info/``, the datastore,
training status) would stall behind it. Processes share nothing but the files on disk.

Errors cross the process boundary as :class:`JobError` (status, detail): 4xx for what the
request got wrong, 500 for the rest.
"""

from __future__ import annotations

import logging
import os
import tempfile
import traceback
from typing import Any

__all__ = ["JobError", "disagreement_job", "error_status", "init", "ping", "infer_job"]

logger = logging.getLogger("medseg.serve.label.worker")

_instance = None


class JobError(Exception):
    """A failed job: HTTP status and message (picklable)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


def error_status(exc: BaseException) -> tuple[int, str] | None:
    """4xx status and message for an error caused by the request, found anywhere in the cause chain."""
    from monailabel.interfaces.exception import ImageNotFoundException, MONAILabelError, MONAILabelException

    from medseg.errors import MedsegError, cause_chain

    for current in cause_chain(exc):
        if isinstance(current, JobError):
            return current.status, current.detail
        if isinstance(current, ImageNotFoundException):
            return 404, current.msg
        if isinstance(current, MONAILabelException) and current.error == MONAILabelError.INVALID_INPUT:
            return 400, current.msg
        if isinstance(current, MedsegError):
            return 422, str(current)
    return None


def init() -> None:
    """Process initializer: build this worker's app instance from the server's settings."""
    global _instance
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s] [%(process)s] [%(threadName)s] [%(levelname)s] (%(name)s:%(lineno)d) - %(message)s",
    )
    from monailabel.interfaces.utils.app import app_instance

    _instance = app_instance()


def ping() -> int:
    """Starts a worker (and its app) ahead of the first request."""
    return os.getpid()


def check_image_file(path: str, name: str) -> None:
    """Read an upload once with medseg's strict loader; JobError 422 with the reason when unusable."""
    from medseg.errors import InputError
    from medseg.io.image import read_image

    try:
        array, _ = read_image(path)
    except InputError as exc:
        # name the upload as the client knows it, not by the server's temporary file
        raise JobError(422, str(exc).replace(path, repr(name))) from None
    except Exception as exc:  # noqa: BLE001 - nibabel/gzip/pynrrd errors for a damaged file
        reason = f"{type(exc).__name__}: {exc}".replace(path, repr(name))
        raise JobError(422, f"{name!r} is not a readable image ({reason})") from None
    if array.ndim != 3:
        raise JobError(422, f"{name!r} has {array.ndim} dimensions; the models need a 3-D image")


def _infer(request: dict, upload: tuple[str, str] | None, dicom_seg: bool, params: dict) -> dict:
    instance = _instance
    if upload is not None:
        check_image_file(*upload)
    result = instance.infer(request)
    if result is None:
        raise JobError(500, "inference returned no result")
    if dicom_seg:
        from medseg.serve.label.seg_output import label_file_to_seg

        datastore = instance.datastore()
        task = instance.infer_task(request["model"])
        fd, seg_path = tempfile.mkstemp(prefix="medseg-seg-", suffix=".dcm")
        os.close(fd)
        result["dicom_seg"] = seg_path
        uids = label_file_to_seg(
            result.get("file") or result.get("label"),
            datastore.series_dir(request["image"]),
            seg_path,
            bundle_path=task.bundle_path,
            weights=(result.get("params") or {}).get("weights", ""),
        )
        result["seg_series_uid"] = uids["series_instance_uid"]
        result["stored"] = False
        if params.get("store"):
            datastore.store_instances([seg_path])
            result["stored"] = True
    return result


def _as_job_error(job: Any, what: str, model: Any) -> Any:
    """Run ``job()``; every failure goes back as a picklable :class:`JobError` (4xx for the request's
    fault, 500 with the traceback logged for the rest)."""
    try:
        return job()
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure crosses the process boundary as a JobError
        mapped = error_status(exc)
        if mapped is not None:
            raise JobError(*mapped) from None
        logger.error("%s with %s failed:\n%s", what, model, traceback.format_exc())
        raise JobError(500, f"{what} failed: {type(exc).__name__}: {exc}") from None


def infer_job(request: dict, upload: tuple[str, str] | None, dicom_seg: bool, params: dict) -> dict[str, Any]:
    """Run one inference request; returns MONAI Label's result dict (files stay on disk)."""
    return _as_job_error(
        lambda: _infer(request, upload, dicom_seg, params), "inference", request.get("model")
    )


_inferences: dict[str, Any] = {}


def _disagreement(model: str, images: dict[str, str]) -> dict[str, float]:
    from medseg.bundle.core import open_bundle
    from medseg.bundle.loader import load_inference
    from medseg.ensemble.disagreement import image_disagreement, require_members

    task = _instance.infer_task(model)
    if task is None:
        raise JobError(404, f"unknown model {model!r}")
    bundle = open_bundle(task.bundle_path)
    if model not in _inferences:
        inference = load_inference(bundle)
        require_members(inference.network, model)
        _inferences[model] = inference
    labels = [v for v in bundle.labels if v != 0]
    return {key: image_disagreement(_inferences[model], path, labels) for key, path in images.items()}


def disagreement_job(model: str, images: dict[str, str]) -> dict[str, float]:
    """Disagreement of a served ensemble's members on each image (``{id: image file}``): ``{id: score}``.

    The ensemble's network, preprocessing and inferer are built once per worker with medseg's loader
    (:func:`medseg.bundle.loader.load_inference`).
    """
    return _as_job_error(lambda: _disagreement(model, images), "disagreement", model)
