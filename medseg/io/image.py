"""One loader for NIfTI, NRRD and DICOM, and an atomic NIfTI writer.

Every loader returns the array indexed (I, J, K) and the voxel-to-world affine in RAS, as
MONAI's ``NibabelReader`` and ``ITKReader(affine_lps_to_ras=True)`` give them, so the result
can go straight into MONAI's spatial transforms (Orientationd, Spacingd, Invertd).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from numpy.typing import DTypeLike

from medseg.errors import GeometryError, InputError
from medseg.io.atomic import atomic_write
from medseg.io.dicom import read_dicom
from medseg.io.formats import NIFTI_SUFFIXES, image_format
from medseg.io.geometry import lps_to_ras

if TYPE_CHECKING:  # torch and MONAI are imported where used: reading alone does not need them
    import torch
    from monai.data import MetaTensor

__all__ = [
    "read_image",
    "read_nifti",
    "read_nrrd",
    "load_image",
    "save_nifti",
    "use_earlier_reads",
]

logger = logging.getLogger(__name__)

EarlierRead = Callable[[str | os.PathLike, str | None, str], "tuple[np.ndarray, dict[str, Any]] | None"]
# Where read_image first asks for a read already made (medseg.io.prefetch registers its forked
# child's result here), so that this module does not import the prefetcher back.
_earlier_read: EarlierRead | None = None


def use_earlier_reads(source: EarlierRead | None) -> None:
    """Let :func:`read_image` first take ``source(path, series_uid, decoder)``'s read, when not None.

    Args:
        source: a read made elsewhere for exactly these arguments, or None to read (as
            :func:`medseg.io.prefetch.take`); ``None`` stops asking.
    """
    global _earlier_read
    _earlier_read = source


def _check_finite(array: np.ndarray, path: str | os.PathLike) -> None:
    if array.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise GeometryError(
            f"{path} has {int(bad.sum())} NaN/inf voxel(s) (first at index {first}); "
            "replace them (e.g. by 0) before using the image"
        )


def _check_affine(affine: np.ndarray, path: str | os.PathLike) -> None:
    sr = affine.shape[0] - 1
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:sr, :sr])) < 1e-12:
        raise GeometryError(
            f"{path} has an invalid voxel-to-world affine (singular or non-finite: zero voxel size?); "
            "fix its header"
        )


def _spatial_meta(
    array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, spatial_rank: int
) -> dict[str, Any]:
    channel = float("nan") if array.ndim == spatial_rank else -1
    sr = affine.shape[0] - 1
    spacing = np.sqrt((affine[:sr, :sr] ** 2).sum(axis=0))
    return {
        "filename_or_obj": str(path),
        "affine": affine.copy(),
        "original_affine": affine.copy(),
        "spatial_shape": np.asarray(array.shape[:spatial_rank]),
        "space": "RAS",
        "original_channel_dim": channel,
        "spacing": spacing,
    }


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a NIfTI file: the array as stored (scaled by scl_slope/scl_inter) and nibabel's affine.

    3-D images come back (I, J, K) with ``original_channel_dim`` nan; a 4-D image (I, J, K, C)
    has its channels last (``original_channel_dim`` -1), as ``NibabelReader`` reports it.

    Raises:
        InputError: unreadable file or more than 4 dimensions; GeometryError: NaN/inf voxels
            or an invalid affine.
    """
    try:
        img = nib.load(str(path))
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for damaged files
        raise InputError(
            f"{path} cannot be read as NIfTI ({type(exc).__name__}: {exc}); is it complete?"
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{path} is not a NIfTI image")
    if array.ndim == 5 and array.shape[3] == 1:  # NIfTI vector images are stored (I, J, K, 1, C)
        array = array[:, :, :, 0, :]
    if array.ndim > 4 or array.ndim < 2:
        raise InputError(
            f"{path} has shape {array.shape}; medseg reads 2-D, 3-D and 4-D (channel-last) NIfTI"
        )
    affine = np.array(img.affine, dtype=np.float64)
    _check_affine(affine, path)
    _check_finite(array, path)
    return array, _spatial_meta(array, affine, path, min(array.ndim, 3))


def read_nrrd(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an NRRD file with SimpleITK: the array (I, J, K[, C]) and the affine in RAS.

    ITK maps the NRRD ``space`` (e.g. left-posterior-superior) to LPS; the affine is
    ``direction @ diag(spacing)`` with the origin, flipped to RAS as ``ITKReader`` does.

    Raises:
        InputError: unreadable file; GeometryError: NaN/inf voxels or an invalid affine.
    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except Exception as exc:  # SimpleITK raises RuntimeError for anything wrong with the file
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} cannot be read as NRRD ({first}); is it complete?") from exc
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise InputError(f"{path} has {dim} spatial dimensions; medseg reads 2-D and 3-D NRRD")
    array = sitk.GetArrayFromImage(img)  # (K, J, I[, C])
    array = np.transpose(array, tuple(range(dim))[::-1] + tuple(range(dim, array.ndim)))
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    affine = np.eye(dim + 1)
    affine[:dim, :dim] = direction @ np.diag(img.GetSpacing())
    affine[:dim, dim] = img.GetOrigin()
    affine = lps_to_ras(affine)
    _check_affine(affine, path)
    _check_finite(array, path)
    return array, _spatial_meta(array, affine, path, dim)


def read_image(
    path: str | os.PathLike, series_uid: str | None = None, decoder: str = "auto"
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read any supported image into (array, metadata) -- the pair a MONAI ImageReader's ``get_data`` gives.

    Args:
        path: a DICOM folder or file, a NIfTI or an NRRD file.
        series_uid: SeriesInstanceUID to pick from a folder with several DICOM series.
        decoder: DICOM pixel decoder, see :func:`medseg.io.dicom.read_dicom`.
    """
    prefetched = _earlier_read(path, series_uid, decoder) if _earlier_read is not None else None
    if prefetched is not None:
        return prefetched
    kind = image_format(path)
    if kind != "dicom" and series_uid is not None:
        raise InputError(f"series_uid applies to DICOM input only, but {path} is {kind.upper()}")
    if kind == "nifti":
        return read_nifti(path)
    if kind == "nrrd":
        return read_nrrd(path)
    if kind == "photo":
        raise InputError(
            f"{path} is a photograph (no geometry): only a bundle planned on photographs segments it "
            "(medseg segment PHOTO --bundle PHOTO_BUNDLE); convert medical images to NIfTI or DICOM"
        )
    return read_dicom(path, series_uid=series_uid, decoder=decoder)


def load_image(
    path: str | os.PathLike, series_uid: str | None = None, *, dtype: DTypeLike | None = np.float32
) -> MetaTensor:
    """Load a NIfTI, NRRD or DICOM series as a channel-less MetaTensor with its RAS world affine.

    The result matches ``LoadImage(reader=MedsegReader(series_uid), image_only=True)(path)``.

    Args:
        path: a DICOM folder (searched recursively) or file, a ``.nii``/``.nii.gz`` or ``.nrrd`` file.
        series_uid: SeriesInstanceUID to load when a DICOM folder holds several image series.
        dtype: type of the returned voxels; None keeps the stored (DICOM: rescaled) type.

    Returns:
        MetaTensor (I, J, K) with ``.affine`` in RAS and meta ``filename_or_obj``,
        ``original_affine``, ``affine``, ``spatial_shape``, ``space`` ("RAS"),
        ``original_channel_dim`` and, for DICOM, ``series_uid``, ``study_uid``,
        ``frame_of_reference_uid``, ``modality``, ``series_description``, ``files``,
        ``sop_instance_uids`` and ``frame_numbers`` (one per slice, in slice order).

    Raises:
        InputError and its subclasses DicomError, GeometryError, SeriesSelectionError with
        a one-line message saying what is wrong and what to do.
    """
    from monai.data import MetaTensor

    array, meta = read_image(path, series_uid=series_uid)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return MetaTensor.ensure_torch_and_prune_meta(array, meta)


def _nifti_ready(image: MetaTensor | torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from monai.data import MetaTensor

    if isinstance(image, MetaTensor):
        affine = image.affine.detach().cpu().numpy().astype(np.float64)
        data = image.detach().cpu().numpy()
        channel = image.meta.get("original_channel_dim", float("nan"))
    else:
        raise InputError(f"save_nifti needs a MetaTensor with an affine, got {type(image).__name__}")
    if data.ndim == 4 and data.shape[0] == 1 and affine.shape == (4, 4) and not isinstance(channel, str):
        data = data[0]  # channel-first single channel, as after EnsureChannelFirst
    if data.ndim not in (2, 3):
        raise InputError(
            f"save_nifti writes 2-D or 3-D images (optionally with one leading channel), got shape {data.shape}"
        )
    if affine.shape == (3, 3):  # 2-D affine: embed in 3-D
        full = np.eye(4)
        full[:2, :2], full[:2, 3] = affine[:2, :2], affine[:2, 2]
        affine = full
    if data.dtype == np.bool_:
        data = data.astype(np.uint8)
    elif data.dtype == np.int64:
        if data.size and (data.min() < np.iinfo(np.int32).min or data.max() > np.iinfo(np.int32).max):
            raise InputError("save_nifti: int64 voxel values exceed int32, which NIfTI readers expect")
        data = data.astype(np.int32)
    elif data.dtype == np.float16:
        data = data.astype(np.float32)
    return data, affine


def save_nifti(image: MetaTensor, path: str | os.PathLike) -> Path:
    """Write a MetaTensor as NIfTI with its affine as both sform and qform (code 1, scanner).

    The file is written to a temporary name in the same folder and moved into place with
    :func:`os.replace`, so an interrupted or failed write never leaves a partial file.

    Args:
        image: channel-less (I, J, K) MetaTensor, or (1, I, J, K) channel-first; its ``.affine`` is RAS.
        path: output ``.nii`` or ``.nii.gz`` file; its folder must exist.

    Returns:
        The path written.
    """
    out = Path(path)
    if not out.name.lower().endswith(NIFTI_SUFFIXES):
        raise InputError(f"{out} must end in .nii or .nii.gz")
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist; create it first")
    data, affine = _nifti_ready(image)
    _check_affine(affine, out)
    nifti = nib.Nifti1Image(data, affine)
    nifti.header.set_xyzt_units("mm", "sec")
    nifti.set_sform(affine, code=1)
    nifti.set_qform(affine, code=1)  # nibabel keeps the nearest rigid+zoom approximation for the qform
    return atomic_write(out, lambda tmp: nib.save(nifti, str(tmp)))
