"""A MONAI ImageReader on top of :func:`medseg.io.read_image`.

Bundles and pipelines use it by name or as an instance::

    LoadImaged(keys="image", reader="medseg.io.MedsegReader")   # found through pydoc.locate
    LoadImage(reader=MedsegReader(series_uid="1.2.3"))

Its output is what ``ITKReader``/``NibabelReader`` give (RAS ``affine`` and ``original_affine``,
``spatial_shape``, ``original_channel_dim``), so EnsureChannelFirstd, Orientationd, Spacingd and
Invertd work on it; the DICOM series is sorted and validated strictly (see :mod:`medseg.io.dicom`).
Only ``monai.data.ImageReader`` is used, which is the same in MONAI 1.5 and 1.6.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader

from medseg.io.dicom import DECODERS, is_dicom_file
from medseg.io.formats import DICOM_SUFFIXES, IMAGE_SUFFIXES
from medseg.io.image import read_image

__all__ = ["MedsegReader"]


def _names(filename: Sequence[str | os.PathLike] | str | os.PathLike) -> list[str]:
    if isinstance(filename, (str, os.PathLike)):
        return [os.fspath(filename)]
    return [os.fspath(f) for f in filename]


def _no_channel(value: Any) -> bool:
    return value is None or value == "no_channel" or (isinstance(value, float) and math.isnan(value))


class MedsegReader(ImageReader):
    """Read NIfTI, NRRD and strictly validated DICOM series for MONAI's ``LoadImage``.

    Args:
        series_uid: SeriesInstanceUID to pick when a DICOM folder holds several image series.
        decoder: DICOM pixel decoder: ``"auto"``, ``"pydicom"`` or ``"simpleitk"``.
        kwargs: ignored; accepted so that ``LoadImage(reader="medseg.io.MedsegReader", ...)`` can pass
            arguments meant for other readers.
    """

    def __init__(self, series_uid: str | None = None, decoder: str = "auto", **kwargs: Any) -> None:
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.series_uid = series_uid
        self.decoder = decoder

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True when every name is a folder (DICOM series), a NIfTI, an NRRD or a DICOM file.

        Args:
            filename: file or folder name, or a list of them.
        """
        for name in _names(filename):
            lower = name.lower()
            if Path(name).is_dir() or lower.endswith(IMAGE_SUFFIXES + DICOM_SUFFIXES):
                continue
            if not is_dicom_file(name):
                return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Read and validate the images; several names are stacked as channels by :meth:`get_data`.

        Args:
            data: a file or folder name, or a list of them.
            kwargs: ``series_uid`` or ``decoder`` to override the constructor's values for this call.

        Returns:
            One ``(array, meta)`` pair, or a list of them for a list of names.
        """
        series_uid = kwargs.get("series_uid", self.series_uid)
        decoder = kwargs.get("decoder", self.decoder)
        names = _names(data)
        images = [read_image(name, series_uid=series_uid, decoder=decoder) for name in names]
        return images[0] if len(images) == 1 else images

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Return the array and its metadata; several images are stacked as a new first (channel) axis.

        Args:
            img: what :meth:`read` returned.

        Raises:
            ValueError: images to stack do not share the same affine and spatial shape.
        """
        images = [img] if isinstance(img, tuple) else list(img)
        if len(images) == 1:
            array, meta = images[0]
            return array, dict(meta)
        arrays = [a for a, _ in images]
        meta = dict(images[0][1])
        for _, other in images[1:]:
            if other["affine"].shape != meta["affine"].shape or not np.allclose(
                other["affine"], meta["affine"], atol=1e-4
            ):
                raise ValueError(
                    f"cannot stack {other['filename_or_obj']} with {meta['filename_or_obj']}: different affines"
                )
            if not np.array_equal(other["spatial_shape"], meta["spatial_shape"]):
                raise ValueError(
                    f"cannot stack {other['filename_or_obj']} with {meta['filename_or_obj']}: different shapes"
                )
        channel = meta.get("original_channel_dim")
        if _no_channel(channel):
            meta["original_channel_dim"] = 0
            return np.stack(arrays, axis=0), meta
        return np.concatenate(arrays, axis=int(channel)), meta
