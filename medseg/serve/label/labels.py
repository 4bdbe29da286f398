"""Checks on a submitted label before the datastore stores it, and medseg's ``PUT /datastore/label``.

Why: stock MONAI Label stores whatever file a client sends as a final label (a label of another
image's size gets a 200) and training then uses it. Here a label is stored only when it is

* readable: NIfTI (``.nii``, ``.nii.gz``) or NRRD (``.nrrd``) as 3D Slicer sends it, or a DICOM SEG
  (``.dcm``) as OHIF sends it on a DICOMweb datastore (mapped onto its source series' grid);
* on its image's grid: the same shape, and the same voxel-to-world affine within
  :data:`AFFINE_TOLERANCE` (a singleton channel axis is accepted);
* made of the served bundles' label values only (whole numbers, e.g. 0, 1, 2).

Otherwise the route answers 4xx with a message and the datastore is left unchanged: 404 unknown
image, 415 unsupported file type, 422 unreadable file, other grid or foreign label values.

The checks (:func:`check_label`) import neither fastapi nor monailabel; :func:`make_router`
builds the route in the MONAI Label venv.
"""

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.serve.label.uploads import parse_params

__all__ = [
    "AFFINE_TOLERANCE",
    "LABEL_SUFFIXES",
    "LabelError",
    "check_label",
    "label_suffix",
    "seg_to_labelmap",
    "as_image_nifti",
    "make_router",
]

logger = logging.getLogger("medseg.serve.labels")

AFFINE_TOLERANCE = 1e-3  # mm (translations) / mm per voxel (direction times spacing)
LABEL_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".dcm")


class LabelError(InputError):
    """A submitted label that cannot be stored; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def label_suffix(name: str) -> str | None:
    """The label file type of an upload's file name, or None when it is not one we read."""
    lower = name.lower()
    for suffix in sorted(LABEL_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return ".nrrd" if suffix == ".seg.nrrd" else suffix
    return None


def _squeeze_channel(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4 and array.shape[0] == 1:
        return array[0]
    if array.ndim == 4 and array.shape[-1] == 1:
        return array[..., 0]
    return array


def seg_to_labelmap(seg_path: str | os.PathLike, source: Any, label_names: Mapping[int, str]) -> np.ndarray:
    """A DICOM SEG as a label map on its source grid, segments mapped to the bundle's label values.

    A segment whose label is one of the bundle's label names gets that name's value; any other
    segment keeps its segment number (checked against the label values afterwards).

    Args:
        seg_path: the SEG file.
        source: the source series (folder or loaded image), as :func:`medseg.io.dicom_seg.read_seg` takes it.
        label_names: the bundle's label values and names (background included or not).
    """
    from medseg.io.dicom_seg import read_seg

    volume = read_seg(seg_path, source=source)
    by_name = {str(n).strip().lower(): int(v) for v, n in label_names.items() if int(v) != 0}
    out = np.zeros(volume.masks.shape[1:], dtype=np.int32)
    for segment, mask in zip(volume.segments, volume.masks, strict=True):
        out[mask] = by_name.get(segment.label.strip().lower(), segment.number)
    return out


def check_label(
    label_path: str | os.PathLike,
    image_path: str | os.PathLike,
    allowed: Iterable[int],
    *,
    name: str = "label",
    label_names: Mapping[int, str] | None = None,
    series_dir: str | os.PathLike | None = None,
) -> np.ndarray:
    """Check a submitted label against its image; returns the label map (I, J, K) as integers.

    Args:
        label_path: the uploaded file (its suffix says its type).
        image_path: the datastore's image file (NIfTI) the label is for.
        allowed: the label values of the served bundles (background 0 included).
        name: the file name as the client sent it (for messages).
        label_names: label values and names, to map a DICOM SEG's segments (by label) to values.
        series_dir: folder of the image's DICOM series (DICOMweb datastore), to place a DICOM SEG.

    Raises:
        LabelError: 415 for an unsupported type; 422 when unreadable, off the image's grid or with
            values that are not labels of the served bundles.
    """
    from medseg.io.image import read_image

    suffix = label_suffix(str(label_path))
    if suffix is None:
        raise LabelError(
            f"label {name!r} is not a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or DICOM SEG (.dcm) file",
            status=415,
        )
    image, image_meta = read_image(image_path)
    image_shape = tuple(_squeeze_channel(np.asarray(image)).shape)
    image_affine = np.asarray(image_meta["affine"], dtype=float)
    if suffix == ".dcm":
        if series_dir is None:
            raise LabelError(
                f"label {name!r} is a DICOM SEG: SEG labels are taken on a DICOMweb datastore only; "
                "send the label as NIfTI or NRRD",
                status=415,
            )
        try:
            label = seg_to_labelmap(label_path, series_dir, label_names or {})
        except Exception as exc:  # noqa: BLE001 - pydicom/highdicom errors of a damaged SEG
            raise LabelError(f"label {name!r} is not a usable DICOM SEG of this image: {exc}") from None
        label_affine = image_affine
    else:
        try:
            array, label_meta = read_image(label_path)
        except Exception as exc:  # noqa: BLE001 - nibabel/gzip/pynrrd errors of a damaged file
            reason = f"{type(exc).__name__}: {exc}".replace(str(label_path), repr(name))
            raise LabelError(f"label {name!r} cannot be read ({reason})") from None
        label = _squeeze_channel(np.asarray(array))
        label_affine = np.asarray(label_meta["affine"], dtype=float)
    if label.ndim != 3 or tuple(label.shape) != image_shape:
        raise LabelError(
            f"label {name!r} has shape {tuple(label.shape)} but its image {image_shape}: "
            "save the label on the image's grid (the segmentation of this very image)"
        )
    if not np.allclose(label_affine, image_affine, atol=AFFINE_TOLERANCE):
        worst = float(np.abs(label_affine - image_affine).max())
        raise LabelError(
            f"label {name!r} lies elsewhere in space than its image (affines differ by up to {worst:.4g} mm): "
            "save the label with the image's geometry"
        )
    values = np.unique(label)
    if not np.all(np.isfinite(values)) or not np.allclose(values, np.round(values)):
        raise LabelError(f"label {name!r} holds non-integer values; a label map holds whole label values")
    allowed = sorted({int(v) for v in allowed})
    foreign = sorted({int(v) for v in np.round(values)} - set(allowed))
    if foreign:
        raise LabelError(
            f"label {name!r} holds values {foreign} that are not labels of the served models "
            f"(allowed: {allowed})"
        )
    return np.round(label).astype(np.int32)


def as_image_nifti(label: np.ndarray, image_path: str | os.PathLike, label_path: str) -> str:
    """The checked label as the datastore stores it: NIfTI with its image's header (affine, qform/sform)
    when the image is NIfTI, so that training reads both alike; else the uploaded file unchanged."""
    import nibabel as nib

    if not str(image_path).endswith((".nii", ".nii.gz")):
        return label_path
    image = nib.load(str(image_path))
    header = image.header.copy()
    header.set_data_dtype(np.uint8 if label.max(initial=0) < 256 else np.uint16)
    header.set_slope_inter(1, 0)
    out = str(Path(label_path).with_name("label-checked.nii.gz"))
    nib.save(nib.Nifti1Image(label.astype(header.get_data_dtype()), image.affine, header), out)
    return out


def make_router(allowed_labels: Any, label_names: Any) -> Any:
    """medseg's ``PUT /datastore/label`` (MONAI Label venv only): bound, check, then store atomically.

    Args:
        allowed_labels: callable ``() -> set of label values`` of the served bundles.
        label_names: callable ``() -> {value: name}`` (to map DICOM SEG segments).
    """
    from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
    from monailabel.config import RBAC_ANNOTATOR, settings
    from monailabel.endpoints.user.auth import RBAC, User
    from monailabel.interfaces.utils.app import app_instance
    from starlette.concurrency import run_in_threadpool

    from medseg.serve.label.guard import request_folder
    from medseg.serve.label.uploads import checked_image
    from medseg.serve.names import FINAL, NameRefused, label_tag, plain_name

    router = APIRouter(prefix="/datastore", tags=["Datastore"])

    def _save(
        image: str, upload: Any, name: str, suffix: str, tag: str, params: dict[str, Any]
    ) -> dict[str, Any]:
        instance = app_instance()
        datastore = instance.datastore()
        try:
            known = image in set(datastore.list_images())
        except Exception as exc:  # noqa: BLE001 - the remote datastore (DICOMweb) is down or refuses
            raise HTTPException(status_code=502, detail=f"the datastore cannot be listed: {exc}") from exc
        if not known:
            raise HTTPException(
                status_code=404,
                detail=f"image {image!r} is not in the datastore; upload it first (PUT /datastore/image)",
            )
        with request_folder("label-") as folder:
            path = checked_image(upload, folder, f"label{suffix}", name, read=False)
            series_dir = datastore.series_dir(image) if hasattr(datastore, "series_dir") else None
            image_uri = datastore.get_image_uri(image)
            try:
                label = check_label(
                    path,
                    image_uri,
                    allowed_labels(),
                    name=name,
                    label_names=label_names(),
                    series_dir=series_dir,
                )
            except LabelError as exc:
                logger.warning("label for %s refused: %s", image, exc)
                raise HTTPException(status_code=exc.status, detail=str(exc)) from None
            label_id = datastore.save_label(image, as_image_nifti(label, image_uri, path), tag, params)
        result = instance.on_save_label(image, label_id) or {}
        result.update({"image": image, "label": label_id})
        logger.info("label %s for %s stored (tag %s)", label_id, image, tag)
        return result

    @router.put("/label", summary=f"{RBAC_ANNOTATOR}Save a finished label (checked against its image first)")
    async def api_save_label(
        image: str,
        params: str = Form("{}"),  # noqa: B008
        tag: str = FINAL,
        label: UploadFile = File(...),  # noqa: B008
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR)),  # noqa: B008
    ):
        try:
            image, tag = plain_name(image, "image id"), label_tag(tag)
        except NameRefused as exc:
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        name = os.path.basename(label.filename or "label.nii.gz")
        suffix = label_suffix(name)
        if suffix is None:
            raise HTTPException(
                status_code=415,
                detail=f"label {name!r} is not a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or DICOM SEG (.dcm) file",
            )
        save_params = parse_params(params)
        if user is not None and getattr(user, "username", None):
            save_params["user"] = user.username
        # reading, checking and storing run in a worker thread: the event loop stays free
        return await run_in_threadpool(_save, image, label, name, suffix, tag, save_params)

    return router
