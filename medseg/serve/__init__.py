"""Serving medseg bundles to 3D Slicer and DICOMweb servers through MONAI Label.

Two sides, two Python environments:

* the core side (medseg's own venv): :mod:`medseg.serve.workdir` prepares a working folder
  (served copies of the bundles, a datastore mirrored from ``--studies``, DICOM series converted),
  :mod:`medseg.serve.launcher` builds the MONAI Label venv on first use and starts and supervises
  the server (``medseg serve``);
* the server side, :mod:`medseg.serve.label` (runs in the MONAI Label venv, whose recipe ships in
  ``medseg/serve/label/recipe/``): the MONAI Label app (bundle infer/train tasks, datastores) and
  MONAI Label's FastAPI app with our ``/infer`` and ``/train`` routes (4xx for bad requests,
  inference off the event loop, versioned fine-tuned weights).

Only :mod:`medseg.serve.label` imports ``monailabel``; everything else here imports in both venvs.
Research use only: neither MONAI Label nor Orthanc authenticates users by default.
"""

__all__: list[str] = []
