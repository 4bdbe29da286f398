"""Serving medseg bundles to 3D Slicer and DICOMweb servers through MONAI Label.

Two sides, two Python environments:

* the core side (medseg's own venv): :mod:`medseg.serve.workdir` prepares a working folder
  (served copies of the bundles, a datastore mirrored from ``--studies``, DICOM series converted),
  :mod:`medseg.serve.launcher` starts and supervises the server (``medseg serve``);
* the server side (the MONAI Label venv made by ``workflows/label_venv.sh``):
  :mod:`medseg.serve.label_app` (the MONAI Label app: bundle infer/train tasks, datastores) and
  :mod:`medseg.serve.asgi` (MONAI Label's FastAPI app with our ``/infer`` and ``/train`` routes:
  4xx for bad requests, inference off the event loop, versioned fine-tuned weights).

Only the server-side modules import ``monailabel``; everything here imports in both venvs.
Research use only: neither MONAI Label nor Orthanc authenticates users by default.
"""

__all__: list[str] = []
