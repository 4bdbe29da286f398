"""medseg's ``PUT /datastore/image`` (and the older ``PUT /datastore/``): image uploads checked first.

Why: 3D Slicer uploads the volume a clinician loaded (the MONAI Label client calls ``PUT
/datastore/?image=ID``) and an empty datastore is filled this way. Stock MONAI Label stores any
file under any id, and uses the id as a file name: ``image=../x`` would write outside the
datastore, and a truncated file is stored and fails later, in inference or training. Here the
id must be a plain name (:func:`medseg.serve.names.plain_name`), the upload stays within the
server's limits (:mod:`medseg.serve.limits`: bytes, and voxels its header announces, checked before
any voxel is read) and the file is a NIfTI or NRRD that reads as a 3-D image; otherwise 400 / 413 /
415 / 422 with a message, the datastore is unchanged and the upload's scratch folder is gone. The
image is stored with an atomic write (see :class:`medseg.serve.label.datastores.MedsegLocalDatastore`).
"""

import json
import os
import shutil
from typing import Any

from medseg.io.formats import SELF_CONTAINED_SUFFIXES, image_suffix, strip_image_suffix
from medseg.serve.names import plain_name

__all__ = [
    "image_id_of",
    "make_router",
    "make_session_router",
    "parse_params",
    "save_upload",
    "upload_suffix",
]


def image_id_of(requested: str | None, filename: str) -> str:
    """The datastore id of an upload: the requested one, else the file name without its image ending.

    Raises:
        medseg.serve.names.NameRefused: the id is not a plain name (letters, digits, ``.``, ``_``, ``-``;
            no path).
    """
    return plain_name(requested or strip_image_suffix(os.path.basename(filename)), "image id")


def save_upload(upload: Any, folder: os.PathLike, name: str) -> str:
    """Copy a request's uploaded file (a Starlette ``UploadFile``) into ``folder`` as ``name``."""
    path = os.path.join(folder, name)
    upload.file.seek(0)
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
    return path


def upload_suffix(name: str) -> str:
    """The image ending of an uploaded image's file name (``.nii.gz``, ``.nrrd``, ...).

    Raises:
        fastapi.HTTPException: 415, with what to do, for anything that is not one self-contained
            NIfTI/NRRD file (a DICOM series goes to the DICOMweb server; ``.nhdr`` needs its data file).
    """
    from fastapi import HTTPException

    suffix = image_suffix(name)
    if suffix not in SELF_CONTAINED_SUFFIXES:
        raise HTTPException(
            status_code=415,
            detail=f"upload {name!r} is not a NIfTI (.nii, .nii.gz) or NRRD (.nrrd) file; convert it first "
            "(medseg convert) or upload the series to the DICOMweb server",
        )
    return suffix


def parse_params(params: str | None) -> dict[str, Any]:
    """The ``params`` form field of an upload or request: a JSON object (``{}`` when absent).

    Raises:
        fastapi.HTTPException: 400 when it is not valid JSON or not an object.
    """
    from fastapi import HTTPException

    try:
        parsed = json.loads(params) if params else {}
    except json.JSONDecodeError as exc:
        raise HTTPException(status_code=400, detail=f"params is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise HTTPException(status_code=400, detail="params must be a JSON object")
    return parsed


def checked_image(upload: Any, folder: os.PathLike, filename: str, name: str, read: bool = True) -> str:
    """An upload saved in the request's ``folder`` as ``filename``, within the server's limits
    (:mod:`medseg.serve.limits`, no voxel read) and, with ``read``, readable as a 3-D image.

    Raises:
        fastapi.HTTPException: 413 / 415 / 422 with the reason, naming the upload as ``name``.
    """
    from fastapi import HTTPException

    from medseg.serve.label.worker import JobError, check_image_file
    from medseg.serve.limits import UploadLimits, UploadRefused, check_volume_file

    path = save_upload(upload, folder, filename)
    try:
        check_volume_file(path, name, UploadLimits.from_env())
        if read:
            check_image_file(path, name)
    except UploadRefused as exc:
        raise HTTPException(status_code=exc.status, detail=str(exc)) from None
    except JobError as exc:
        raise HTTPException(status_code=exc.status, detail=exc.detail) from None
    return path


def make_router() -> Any:
    """The upload routes (MONAI Label venv only)."""
    from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
    from monailabel.config import RBAC_ANNOTATOR, settings
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance
    from starlette.concurrency import run_in_threadpool

    from medseg.serve.label.guard import request_folder
    from medseg.serve.names import NameRefused

    router = APIRouter(prefix="/datastore", tags=["Datastore"])

    def _store(image_id: str, upload: Any, name: str, suffix: str, params: dict[str, Any]) -> dict[str, Any]:
        with request_folder("image-") as folder:
            path = checked_image(upload, folder, f"{image_id}{suffix}", name)
            return {"image": app_instance().datastore().add_image(image_id, path, params)}

    async def api_add_image(
        image: str | None = None,
        params: str = Form("{}"),  # noqa: B008
        file: UploadFile = File(...),  # noqa: B008
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),  # noqa: B008
    ):
        name = os.path.basename(file.filename or "image.nii.gz")
        suffix = upload_suffix(name)
        try:
            image_id = image_id_of(image, name)
        except NameRefused as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        save_params = parse_params(params)
        if user is not None and getattr(user, "username", None):
            save_params["user"] = user.username
        # reading, checking and storing run in a worker thread: the event loop stays free
        return await run_in_threadpool(_store, image_id, file, name, suffix, save_params)

    summary = f"{RBAC_ANNOTATOR}Upload a new image (checked: a readable 3-D NIfTI/NRRD under a plain id)"
    router.add_api_route("/image", api_add_image, methods=["PUT"], summary=summary)
    router.add_api_route("/", api_add_image, methods=["PUT"], summary=summary, include_in_schema=False)
    return router


def make_session_router() -> Any:
    """medseg's ``PUT /session/`` (MONAI Label venv only): a session holds one checked image.

    Stock MONAI Label stores whatever files come and, with ``uncompress=true``, unpacks an archive
    with ``shutil.unpack_archive`` (a tar member named ``../../x`` lands outside the sessions folder,
    a zip bomb fills the disk). Here a session is one NIfTI/NRRD file checked like an uploaded image;
    archives are refused.
    """
    from fastapi import APIRouter, Depends, File, HTTPException, UploadFile
    from monailabel.config import RBAC_ANNOTATOR, settings
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance
    from starlette.concurrency import run_in_threadpool

    from medseg.serve.label.guard import request_folder

    router = APIRouter(prefix="/session", tags=["Session"])

    def _create(upload: Any, name: str, suffix: str, expiry: int) -> dict[str, Any]:
        sessions = app_instance().sessions()
        if sessions is None:
            raise HTTPException(status_code=406, detail="sessions are not enabled on this server")
        with request_folder("session-") as folder:
            path = checked_image(upload, folder, f"image{suffix}", name)
            session_id, info = sessions.add_session(path, max(0, int(expiry)), False)
        return {"session_id": session_id, "session_info": info.to_json()}

    async def api_create_session(
        uncompress: bool = False,
        expiry: int = 0,
        files: list[UploadFile] = File(...),  # noqa: B008
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),  # noqa: B008
    ):
        if uncompress:
            raise HTTPException(
                status_code=400, detail="archives are not unpacked here: send one NIfTI or NRRD file"
            )
        if len(files) != 1:
            raise HTTPException(
                status_code=400, detail="a session holds one image: send one NIfTI or NRRD file"
            )
        name = os.path.basename(files[0].filename or "image.nii.gz")
        return await run_in_threadpool(_create, files[0], name, upload_suffix(name), expiry)

    router.add_api_route(
        "/", api_create_session, methods=["PUT"], summary=f"{RBAC_ANNOTATOR}Create a session with one image"
    )
    return router
