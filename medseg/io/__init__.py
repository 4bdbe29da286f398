"""Image I/O: NIfTI, NRRD and strictly validated DICOM series, as MONAI MetaTensors in RAS.

Public API:

* :func:`load_image` -- load a NIfTI/NRRD file or a DICOM series (folder or file) as a MetaTensor.
* :class:`MedsegReader` -- the same as a MONAI ``ImageReader`` (``reader="medseg.io.MedsegReader"``).
* :func:`scan_series` -- list the DICOM series under a folder with their geometry problems.
* :func:`save_nifti` -- write a MetaTensor as NIfTI, atomically, with sform and qform.
* :func:`discover` / :func:`image_format` -- the input images under a folder (stable ids), the
  format of one path; the one table of image formats is :mod:`medseg.io.formats`.
* :func:`write_seg` / :func:`read_seg` -- DICOM SEG writer and reader (:mod:`medseg.io.dicom_seg`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Where each public name lives. They are imported on first use (PEP 562), so that reading a DICOM
# series (medseg.io.dicom: pydicom and numpy only) does not pay for importing torch and MONAI.
_EXPORTS = {
    "LoadImaged": "medseg.io.loadimage",
    "load_image": "medseg.io.image",
    "read_image": "medseg.io.image",
    "read_dicom": "medseg.io.dicom",
    "save_nifti": "medseg.io.image",
    "scan_series": "medseg.io.dicom",
    "scan_folder": "medseg.io.dicom",
    "SeriesInfo": "medseg.io.dicom",
    "MedsegReader": "medseg.io.reader",
    "discover": "medseg.io.formats",
    "image_format": "medseg.io.formats",
    "write_seg": "medseg.io.dicom_seg",
    "read_seg": "medseg.io.dicom_seg",
}

__all__ = [
    "LoadImaged",
    "load_image",
    "read_image",
    "read_dicom",
    "save_nifti",
    "scan_series",
    "scan_folder",
    "SeriesInfo",
    "MedsegReader",
    "discover",
    "image_format",
    "write_seg",
    "read_seg",
]

if TYPE_CHECKING:
    from medseg.io.dicom import SeriesInfo, read_dicom, scan_folder, scan_series
    from medseg.io.dicom_seg import read_seg, write_seg
    from medseg.io.formats import discover, image_format
    from medseg.io.image import load_image, read_image, save_nifti
    from medseg.io.loadimage import LoadImaged
    from medseg.io.reader import MedsegReader


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
