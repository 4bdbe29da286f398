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
* ``GET /datastore/image``, ``/datastore/label`` send the file opened first (a label rewritten
  meanwhile arrives whole, old or new); ``GET /datastore/image/info``, ``/label/info`` and
  ``/datastore/`` show server file paths to admins only;
* ``/proxy/dicom/...`` forwards DICOMweb reads and stores only (:mod:`medseg.serve.label.proxy`);
* ``PUT /session/`` takes one checked image and never unpacks an archive;
* errors raised by MONAI Label for bad input anywhere in the API become 4xx instead of 500;
* in front of every route: the name and size rules of :mod:`medseg.serve.label.guard`, then, with
  ``medseg serve --users``/``--auth-realm``, the login (:mod:`medseg.serve.label.auth`).

Importing this module changes nothing and starts nothing: the scratch folders are emptied, the
worker pool started and MONAI Label's CORS middleware restricted by :func:`startup`, which :func:`app` runs on the first event
it gets from the server (the ASGI lifespan start-up under uvicorn).
"""

# ruff: noqa: B008 - FastAPI declares request parameters with File()/Form()/Depends() defaults
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import re
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
from starlette.concurrency import run_in_threadpool

from medseg.errors import MedsegError
from medseg.serve import names
from medseg.serve.label import auth, labels, proxy, uploads, versions, worker
from medseg.serve.label.guard import clean_scratch, guard, request_folder
from medseg.serve.label.guard import workdir as guard_workdir
from medseg.serve.label.worker import JobError, error_status
from medseg.serve.users import ROLE_PREFIX

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


RESULT_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd")


def _save_upload(upload: UploadFile, folder: str) -> str:
    """The upload in the request's folder, checked against the server's limits (no voxel read yet)."""
    name = os.path.basename(upload.filename or "image.nii.gz")
    # read=False: the inference worker reads it (and refuses it there, with the same message)
    return uploads.checked_image(upload, folder, f"upload{uploads.upload_suffix(name)}", name, read=False)


def _output_options(p: dict[str, Any], from_datastore: bool) -> None:
    """Options of an inference request that reach file names: a saved result is a model's output
    (tag ``original``, never ``final``: a final label always passes the label checks of
    PUT /datastore/label), and result files have an image ending.

    Raises:
        HTTPException: 400 with what to send instead.
    """
    if p.get("save_label") or "label_tag" in p:
        try:
            tag = names.label_tag(p.get("label_tag") or names.ORIGINAL)
        except names.NameRefused as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        if tag != names.ORIGINAL:
            raise HTTPException(
                status_code=400,
                detail=f"an inference result is saved with label_tag {names.ORIGINAL!r}; submit a corrected "
                "final label with PUT /datastore/label (it is checked against its image)",
            )
        if p.get("save_label") and not from_datastore:
            raise HTTPException(status_code=400, detail="save_label needs image=<a datastore id>")
        p["label_tag"] = tag
    extension = p.get("result_extension")
    if extension is not None and extension not in RESULT_EXTENSIONS:
        raise HTTPException(
            status_code=400, detail=f"result_extension must be one of {', '.join(RESULT_EXTENSIONS)}"
        )


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
        served = ", ".join(instance.infer_names()) or "none"
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; this server has: {served}")
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

    if image:
        try:
            names.plain_name(image, "image id")
        except names.NameRefused as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    _output_options(p, bool(image))
    with request_folder("infer-") as folder:
        return await _infer(
            background_tasks, instance, model, image, session_id, p, file, output, str(folder)
        )


async def _infer(background_tasks, instance, model, image, session_id, p, file, output, folder):
    """The inference of :func:`api_run_inference`; an upload lives in ``folder`` until it returns."""
    request: dict[str, Any] = {"model": model, "image": image}
    upload = None
    if file is not None:
        saved = await asyncio.get_running_loop().run_in_executor(None, _save_upload, file, folder)
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
        served = ", ".join(instance.trainer_names()) or "none"
        raise HTTPException(status_code=404, detail=f"unknown model {model!r}; trainable models: {served}")
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
    """Server start-up, once: remove what a crash left in the scratch folders, restrict CORS (before
    the middleware stack is built) and start the inference workers so that they load the models
    while MONAI Label starts."""
    global _started
    if _started:
        return
    _started = True
    clean_scratch()
    _restrict_cors()
    infer_pool()


def _is_admin(request: Request) -> bool:
    user = getattr(request.state, "medseg_user", None)
    return user is None or f"{ROLE_PREFIX}admin" in (getattr(user, "roles", None) or [])


def _without_paths(value: Any) -> Any:
    """``value`` with the server's file paths taken out: ``path`` entries dropped, other absolute
    paths cut to their file name (a datalist's images and labels)."""
    if isinstance(value, dict):
        return {k: _without_paths(v) for k, v in value.items() if k != "path"}
    if isinstance(value, list):
        return [_without_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/"):
        return os.path.basename(value)
    return value


async def api_image_info(
    request: Request, image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
):
    info = await run_in_threadpool(app_instance().datastore().get_image_info, image)
    return info if _is_admin(request) else _without_paths(info)


async def api_label_info(
    request: Request, label: str, tag: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
):
    info = await run_in_threadpool(app_instance().datastore().get_label_info, label, names.label_tag(tag))
    return info if _is_admin(request) else _without_paths(info)


def _open_snapshot(path: str, media_type: str | None = None):
    """A response with the file as it is at this moment: opened first, its size taken from the open file,
    so that a label replaced meanwhile (an atomic rename) is sent whole, old or new, never a mix."""
    from starlette.responses import StreamingResponse

    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the stream below
    except OSError:
        raise HTTPException(status_code=404, detail="not found") from None
    size = os.fstat(handle.fileno()).st_size

    def chunks():
        with handle:
            while block := handle.read(1 << 20):
                yield block

    name = os.path.basename(path)
    headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{name}"'}
    return StreamingResponse(chunks(), media_type=media_type or "application/octet-stream", headers=headers)


async def api_download_image(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    uri = await run_in_threadpool(app_instance().datastore().get_image_uri, image)
    if not uri or not os.path.isfile(uri):
        raise HTTPException(status_code=404, detail=f"image {image!r} is not in the datastore")
    return _open_snapshot(uri)


async def api_download_label(
    label: str, tag: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))
):
    uri = await run_in_threadpool(app_instance().datastore().get_label_uri, label, names.label_tag(tag))
    if not uri or not os.path.isfile(uri):
        raise HTTPException(status_code=404, detail=f"no {tag} label of {label!r}")
    return _open_snapshot(uri)


async def _disagreement_sample(params: dict[str, Any]) -> dict[str, Any]:
    """The unlabelled image the served ensemble's members disagree on most (scores cached per image
    and members' version in ``WORKDIR/activelearning/<model>.json``; missing ones computed in the
    inference workers)."""
    from medseg.bundle.core import open_bundle
    from medseg.bundle.loader import is_ensemble, weight_files
    from medseg.ensemble.disagreement import ScoreCache, members_version

    instance = app_instance()
    served = instance.infer_names()
    ensembles = [n for n in served if is_ensemble(open_bundle(instance.infer_task(n).bundle_path))]
    model = params.get("model") or (ensembles[0] if ensembles else None)
    if model is None:
        raise HTTPException(
            status_code=409,
            detail="no served model has cross-validation members to disagree: serve an ensemble bundle "
            "(medseg train BUNDLE --cv, then medseg ensemble choose)",
        )
    if model not in served:
        raise HTTPException(
            status_code=404, detail=f"unknown model {model!r}; this server has: {', '.join(served)}"
        )
    if model not in ensembles:
        raise HTTPException(
            status_code=409,
            detail=f"model {model!r} has no cross-validation members to disagree; models that have: "
            f"{', '.join(ensembles) or 'none'} (medseg train BUNDLE --cv, then medseg ensemble choose)",
        )
    datastore = instance.datastore()
    unlabelled = sorted(await run_in_threadpool(datastore.get_unlabeled_images))
    if not unlabelled:
        return {}
    bundle = open_bundle(instance.infer_task(model).bundle_path)
    cache = ScoreCache(
        guard_workdir() / "activelearning" / f"{model}.json", members_version(weight_files(bundle))
    )
    missing = {
        i: await run_in_threadpool(datastore.get_image_uri, i) for i in unlabelled if i not in cache.scores
    }
    if missing:
        try:
            cache.scores.update(await _run(worker.disagreement_job, model, missing))
        except JobError as exc:
            raise HTTPException(status_code=exc.status, detail=exc.detail) from None
        await run_in_threadpool(cache.save)
    best = max(unlabelled, key=lambda i: (cache.scores[i], i))
    info = await run_in_threadpool(datastore.get_image_info, best)
    logger.info("next sample by disagreement of %s: %s (%.4f)", model, best, cache.scores[best])
    return {
        **info,
        "id": best,
        "strategy": "disagreement",
        "model": model,
        "disagreement": round(cache.scores[best], 6),
    }


async def api_next_sample(
    request: Request,
    strategy: str,
    params: dict | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    """MONAI Label's next sample, plus ``disagreement``; server paths for admins only."""
    from monailabel.endpoints.activelearning import sample

    if params is not None and not isinstance(params, dict):
        raise HTTPException(status_code=400, detail="the body must be a JSON object")
    if strategy == "disagreement":
        result = await _disagreement_sample(params or {})
    else:
        result = await run_in_threadpool(sample, strategy, params, getattr(user, "username", None))
    return result if _is_admin(request) else _without_paths(result)


async def api_download_dataset(
    limit_cases: int | None = None, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))
):
    """The dataset as a ZIP (stock route), built off the event loop and removed once sent (stock leaves
    every archive behind: repeated downloads would fill the disk)."""
    from starlette.background import BackgroundTask

    datastore = app_instance().datastore()
    try:
        path = await run_in_threadpool(datastore.get_dataset_archive, limit_cases)
    except AssertionError as exc:
        raise HTTPException(status_code=404, detail=f"no archive: {exc}") from None
    return FileResponse(
        path, media_type="application/zip", filename="dataset.zip", background=BackgroundTask(os.unlink, path)
    )


async def api_datastore(
    request: Request,
    output: str | None = None,
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER)),
):
    datastore = app_instance().datastore()
    if output == "all":
        found = await run_in_threadpool(datastore.json)
    elif output == "train":
        found = await run_in_threadpool(datastore.datalist)
    elif output in (None, "", "stats"):
        found = await run_in_threadpool(datastore.status)
    else:
        raise HTTPException(status_code=400, detail="output is one of stats, all, train")
    return found if _is_admin(request) else _without_paths(found)


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
api.include_router(uploads.make_session_router())
api.include_router(proxy.make_router())
for _path, _route in (("/datastore/image/info", api_image_info), ("/datastore/label/info", api_label_info)):
    api.add_api_route(_path, _route, methods=["GET"], summary=f"{RBAC_USER}Info (file paths for admins only)")
api.add_api_route("/datastore/", api_datastore, methods=["GET"], summary=f"{RBAC_USER}Images and labels")
api.add_api_route("/datastore/dataset", api_download_dataset, methods=["GET"], summary="The dataset as a ZIP")
api.add_api_route(
    "/activelearning/{strategy}", api_next_sample, methods=["POST"], summary=f"{RBAC_USER}Next sample"
)
api.add_api_route(
    "/datastore/image", api_download_image, methods=["GET"], summary=f"{RBAC_USER}Download an image"
)
api.add_api_route(
    "/datastore/label", api_download_label, methods=["GET"], summary=f"{RBAC_USER}Download a label"
)

# (method, path) served by `api`; everything else goes to MONAI Label's app
_OURS = (
    (None, re.compile(r"^/proxy/dicom(/|$)")),
    ("GET", re.compile(r"^/datastore/(image/info|label/info|image|label|dataset)?/?$")),
    ("POST", re.compile(r"^/(infer|train|activelearning)/[^/]+/?$")),
    ("PUT", re.compile(r"^/datastore/label/?$")),
    ("PUT", re.compile(r"^/session/?$")),
    ("PUT", re.compile(r"^/datastore/(image/?)?$")),
    ("GET", re.compile(r"^/model/versions/[^/]+/?$")),
    ("POST", re.compile(r"^/model/versions/[^/]+/(promote|rollback)/?$")),
)


def _is_ours(scope) -> bool:
    method, path = scope.get("method"), scope.get("path", "")
    return scope["type"] == "http" and any(
        m in (None, method) and pattern.match(path) for m, pattern in _OURS
    )


async def app(scope, receive, send):
    """The ASGI app uvicorn runs: medseg's routes first, MONAI Label's for the rest."""
    if not _started:
        startup()
    if _is_ours(scope):
        await api(scope, receive, send)
    else:
        await stock_app(scope, receive, send)


# outermost first: names and sizes (guard), then the login (protect), then the routes
app = guard(auth.protect(app, api, stock_app))
