"""MONAI Label's FastAPI app with medseg's ``/infer`` and ``/train`` routes (MONAI Label venv only).

Run by ``medseg serve`` as ``monailabel start_server ... --uvicorn_app medseg.serve.label.asgi:app``.
What changes against the stock server (monailabel 0.8.5):

* ``POST /infer/{model}`` checks the request before anything runs and answers 4xx with a message:
  404 for an unknown model or an image id the datastore does not hold (server file paths are not
  accepted as ids), 415 for an upload that is not NIfTI/NRRD, 422 for one that cannot be read
  (truncated, not an image), 400 for malformed params; the inference itself runs in a pool of
  worker processes (``MEDSEG_SERVE_INFER_WORKERS``, default 1; see :mod:`medseg.serve.label.worker`),
  so the event loop (``/info/``, the datastore, training status) stays responsive while requests
  queue;
* ``output=dicom_seg`` (DICOMweb datastore) writes a DICOM SEG with the bundle's label names and
  coded concepts (:mod:`medseg.serve.label.seg_output`); with ``params={"store": true}`` the SEG is also
  stored back on the DICOMweb server with STOW-RS;
* ``POST /train/{model}`` answers 404 for an unknown model and 409 without enough labels, and
  never blocks the event loop; the train task writes a new weights version (see
  :mod:`medseg.serve.label.app`);
* ``PUT /datastore/label`` checks a label against its image before anything is stored
  (:mod:`medseg.serve.label.labels`); on a DICOMweb datastore the label is stored as a DICOM SEG
  written by medseg; ``PUT /datastore/image`` takes only a readable 3-D NIfTI/NRRD under a plain
  id (:mod:`medseg.serve.label.uploads`);
* ``GET /model/versions/{model}``, ``POST /model/versions/{model}/promote`` and ``/rollback``
  list the weights versions with their scores and change the serving one (admin only; see
  :mod:`medseg.serve.label.versions`);
* errors raised by MONAI Label for bad input anywhere in the API become 4xx instead of 500;
* with ``medseg serve --users``/``--auth-realm`` every route needs a login (:mod:`medseg.serve.label.auth`).

Importing this module changes nothing and starts nothing: the worker pool is started and MONAI
Label's CORS middleware restricted by :func:`startup`, which :func:`app` runs on the first event
it gets from the server (the ASGI lifespan start-up under uvicorn).
"""

# ruff: noqa: B008 - FastAPI declares request parameters with File()/Form()/Depends() defaults
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from fastapi import BackgroundTasks, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from monailabel.app import app as stock_app
from monailabel.config import RBAC_ADMIN, RBAC_USER, settings
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.exception import MONAILabelException
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.async_tasks.task import AsyncTask
from monailabel.utils.others.generic import remove_file

from medseg.errors import MedsegError
from medseg.serve.label import auth, labels, uploads, versions, worker
from medseg.serve.label.worker import JobError, error_status

__all__ = ["app", "api", "stock_app", "startup", "infer_pool"]

logger = logging.getLogger("medseg.serve")

INFER_WORKERS = max(1, int(os.environ.get("MEDSEG_SERVE_INFER_WORKERS", "1")))


def _new_pool() -> ProcessPoolExecutor:
    """Worker processes (see medseg.serve.label.worker), started with the server, each with its own app."""
    pool = ProcessPoolExecutor(
        max_workers=INFER_WORKERS, mp_context=multiprocessing.get_context("spawn"), initializer=worker.init
    )
    for _ in range(INFER_WORKERS):
        pool.submit(worker.ping)
    return pool


MAX_QUEUED = max(1, int(os.environ.get("MEDSEG_SERVE_MAX_QUEUED", "64")))
_queued = 0
_pool: ProcessPoolExecutor | None = None
_started = False


def infer_pool() -> ProcessPoolExecutor:
    """The inference worker pool; started on first use (normally by :func:`startup`)."""
    global _pool
    if _pool is None:
        _pool = _new_pool()
    return _pool


def _replace_broken_pool(broken: ProcessPoolExecutor) -> None:
    """A worker of ``broken`` died (killed, out of memory): the pool refuses all further work, so start
    a new one for what follows (once, however many requests saw it fail)."""
    global _pool
    if _pool is broken:
        broken.shutdown(wait=False, cancel_futures=True)
        _pool = _new_pool()


class BadRequest(HTTPException):
    pass


async def _monailabel_exception(request: Request, exc: MONAILabelException) -> JSONResponse:
    mapped = error_status(exc)
    if mapped is not None:
        return JSONResponse(status_code=mapped[0], content={"detail": mapped[1]})
    logger.error("%s %s failed: %s", request.method, request.url.path, exc.msg)
    return JSONResponse(status_code=500, content={"detail": f"{exc.error.value}: {exc.msg}"})


async def _medseg_exception(request: Request, exc: MedsegError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": str(exc)})


# medseg's routes live in their own FastAPI app; `app` below sends POST /infer/{model} and
# POST /train/{model} there and everything else (and the lifespan) to MONAI Label's app
api = FastAPI(title="medseg serve", openapi_url=None, docs_url=None, redoc_url=None)
for _target in (api, stock_app):
    _target.add_exception_handler(MONAILabelException, _monailabel_exception)
    _target.add_exception_handler(MedsegError, _medseg_exception)


def _save_upload(upload: UploadFile) -> str:
    suffix = uploads.upload_suffix(os.path.basename(upload.filename or "image.nii.gz"))
    fd, path = tempfile.mkstemp(prefix="medseg-upload-", suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(upload.file, out)
    return path


def _datastore_has(instance: Any, image: str) -> bool:
    try:
        return image in set(instance.datastore().list_images())
    except Exception as exc:  # noqa: BLE001 - the remote datastore (DICOMweb) is down or refuses
        raise HTTPException(status_code=502, detail=f"the datastore cannot be listed: {exc}") from exc


async def _run(func, *args):
    global _queued
    if _queued >= MAX_QUEUED:
        raise HTTPException(
            status_code=503, detail=f"{_queued} inference requests are waiting; try again later"
        )
    _queued += 1
    pool = infer_pool()
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, func, *args)
    except BrokenProcessPool:
        _replace_broken_pool(pool)
        raise
    finally:
        _queued -= 1


async def api_run_inference(
    background_tasks: BackgroundTasks,
    model: str,
    image: str = "",
    session_id: str = "",
    params: str = Form("{}"),
    file: UploadFile = File(None),
    label: UploadFile = File(None),
    output: ResultType | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    instance = app_instance()
    if model not in instance.infer_names():
        names = ", ".join(instance.infer_names()) or "none"
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server has: {names}")
    p = uploads.parse_params(params)
    sources = [s for s in (bool(image), file is not None, bool(session_id)) if s]
    if len(sources) != 1:
        raise HTTPException(
            status_code=400,
            detail="give exactly one of image (a datastore id), file (an upload) or session_id",
        )
    if label is not None:
        raise HTTPException(
            status_code=400, detail=f"model {model!r} is a segmentation model and takes no label input"
        )
    if output == ResultType.dicom_seg:
        if not hasattr(instance.datastore(), "series_dir"):
            raise HTTPException(
                status_code=400,
                detail="output=dicom_seg needs a DICOMweb datastore (start with --studies http://.../dicom-web)",
            )
        if not image:
            raise HTTPException(
                status_code=400,
                detail="output=dicom_seg needs image=<SeriesInstanceUID> of the DICOMweb server",
            )

    request: dict[str, Any] = {"model": model, "image": image}
    upload = None
    if file is not None:
        saved = await asyncio.get_running_loop().run_in_executor(None, _save_upload, file)
        background_tasks.add_task(remove_file, saved)
        request["image"] = saved
        upload = (saved, os.path.basename(file.filename or "upload"))
    elif session_id:
        session = instance.sessions().get_session(session_id)
        if not session:
            raise HTTPException(
                status_code=404, detail=f"session {session_id!r} does not exist or has expired"
            )
        request["image"] = session.image
        request["session"] = session.to_json()
    elif not await asyncio.get_running_loop().run_in_executor(None, _datastore_has, instance, image):
        raise HTTPException(
            status_code=404,
            detail=f"image {image!r} is not in the datastore; GET /datastore/?output=all lists the ids",
        )

    for key in ("model", "image"):
        p.pop(key, None)  # a request names its model and image in the URL, not in params
    request.update(p)

    try:
        result = await _run(worker.infer_job, request, upload, output == ResultType.dicom_seg, p)
    except JobError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None
    except BrokenProcessPool as exc:
        logger.error("an inference worker died:\n%s", traceback.format_exc())
        raise HTTPException(
            status_code=500, detail=f"the inference worker died ({exc}); see the server log"
        ) from exc

    if output == ResultType.dicom_seg:
        for key in ("file", "dicom_seg"):
            if result.get(key):
                background_tasks.add_task(remove_file, result[key])
        headers = {
            "X-Medseg-Seg-Series-Uid": result["seg_series_uid"],
            "X-Medseg-Stored": str(result["stored"]).lower(),
        }
        return FileResponse(
            result["dicom_seg"], media_type="application/dicom", filename="seg.dcm", headers=headers
        )
    return send_response(instance.datastore(), result, output, background_tasks)


def _train_checks(model: str) -> None:
    instance = app_instance()
    if model not in instance.trainer_names():
        names = ", ".join(instance.trainer_names()) or "none"
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; trainable models: {names}")
    labelled = len(instance.datastore().datalist())
    if labelled < 2:
        raise HTTPException(
            status_code=409,
            detail=f"training needs at least 2 images with final labels; the datastore has {labelled}",
        )


async def api_run_train(
    model: str,
    params: dict | None = None,
    run_sync: bool | None = False,
    enqueue: bool | None = False,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, _train_checks, model)
    if params is not None and not isinstance(params, dict):
        raise HTTPException(status_code=400, detail="the body must be a JSON object of training options")
    request = {"model": model}
    # the model comes from the URL; a "model" or "bundle_path" in the options would retarget the job
    params = {k: v for k, v in (params or {}).items() if k not in ("model", "bundle_path")}
    learning_rate = params.get("learning_rate")
    if learning_rate is not None and (
        isinstance(learning_rate, bool)
        or not isinstance(learning_rate, (int, float))
        or not learning_rate > 0
    ):
        raise HTTPException(
            status_code=400, detail=f"learning_rate must be a positive number, got {learning_rate!r}"
        )

    def start():
        return AsyncTask.run("train", request=request, params=params, force_sync=run_sync, enqueue=enqueue)

    res, detail = await loop.run_in_executor(None, start)
    if res is None:
        raise HTTPException(status_code=429, detail=detail)
    return res


def _restrict_cors() -> None:
    """Stock MONAI Label allows every web origin, with credentials: any page a user opens could drive
    the API from their browser. Allow only the origins in MEDSEG_SERVE_CORS_ORIGINS (comma-separated;
    default none). 3D Slicer is not a browser and is not affected."""
    from starlette.middleware.cors import CORSMiddleware

    origins = [o.strip() for o in os.environ.get("MEDSEG_SERVE_CORS_ORIGINS", "").split(",") if o.strip()]
    for middleware in stock_app.user_middleware:
        if middleware.cls is CORSMiddleware:
            middleware.kwargs["allow_origins"] = origins
    stock_app.middleware_stack = None


def startup() -> None:
    """Server start-up, once: restrict CORS (before the middleware stack is built) and start the
    inference workers so that they load the models while MONAI Label starts."""
    global _started
    if _started:
        return
    _started = True
    _restrict_cors()
    infer_pool()


api.add_api_route(
    "/infer/{model}",
    api_run_inference,
    methods=["POST"],
    summary=f"{RBAC_USER}Run inference with a bundle (4xx for bad requests; runs in a worker pool)",
)
api.add_api_route(
    "/train/{model}",
    api_run_train,
    methods=["POST"],
    summary=f"{RBAC_ADMIN}Fine-tune a bundle with the datastore's labels (writes a new weights version)",
)
api.include_router(
    labels.make_router(lambda: app_instance().label_values(), lambda: app_instance().label_names())
)
api.include_router(versions.make_router(lambda model: app_instance().version_store(model)))
api.include_router(uploads.make_router())

# (method, path) served by `api`; everything else goes to MONAI Label's app
_OURS = (
    ("POST", re.compile(r"^/(infer|train)/[^/]+/?$")),
    ("PUT", re.compile(r"^/datastore/label/?$")),
    ("PUT", re.compile(r"^/datastore/(image/?)?$")),
    ("GET", re.compile(r"^/model/versions/[^/]+/?$")),
    ("POST", re.compile(r"^/model/versions/[^/]+/(promote|rollback)/?$")),
)


def _is_ours(scope) -> bool:
    method, path = scope.get("method"), scope.get("path", "")
    return scope["type"] == "http" and any(method == m and pattern.match(path) for m, pattern in _OURS)


async def app(scope, receive, send):
    """The ASGI app uvicorn runs: medseg's routes first, MONAI Label's for the rest."""
    if not _started:
        startup()
    if _is_ours(scope):
        await api(scope, receive, send)
    else:
        await stock_app(scope, receive, send)


app = auth.protect(app, api, stock_app)  # the login, when medseg serve configures one
