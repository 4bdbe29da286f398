"""Image I/O: NIfTI, NRRD and strictly validated DICOM series, as MONAI MetaTensors in RAS.

Public API:

* :func:`load_image` -- load a NIfTI/NRRD file or a DICOM series (folder or file) as a MetaTensor.
* :class:`MedsegReader` -- the same as a MONAI ``ImageReader`` (``reader="medseg.io.MedsegReader"``).
* :func:`scan_series` -- list the DICOM series under a folder with their geometry problems.
* :func:`save_nifti` -- write a MetaTensor as NIfTI, atomically, with sform and qform.
"""

from medseg.io.dicom import SeriesInfo, read_dicom, scan_folder, scan_series
from medseg.io.image import load_image, read_image, save_nifti
from medseg.io.reader import MedsegReader
from medseg.io.transforms import LoadImaged

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
]
