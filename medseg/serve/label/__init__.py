"""The MONAI Label side of ``medseg serve``: runs only inside the MONAI Label venv.

This subpackage is the only part of medseg that imports ``monailabel`` (a test checks it):

* :mod:`medseg.serve.label.app`: the MONAI Label app (bundle infer/train tasks, datastores) and the
  one adapter over monailabel 0.8.5 internals;
* :mod:`medseg.serve.label.asgi`: MONAI Label's FastAPI app with medseg's ``/infer`` and ``/train``;
* :mod:`medseg.serve.label.worker`: the inference worker processes;
* :mod:`medseg.serve.label.seg_output`: the DICOM SEG of an inference result (``output=dicom_seg``)
  and of a label submitted to a DICOMweb datastore;
* :mod:`medseg.serve.label.labels`: checks on a submitted label and ``PUT /datastore/label``;
* :mod:`medseg.serve.label.uploads`: checks on an uploaded image and ``PUT /datastore/image``;
* :mod:`medseg.serve.label.versions`: weights versions, the promotion rule and ``/model/versions``;
* ``recipe/`` (package data): ``label_venv.sh`` with the venv's pinned requirements, and the app
  template ``main.py`` that :func:`medseg.serve.workdir.prepare_workdir` copies into the workdir.

Nothing is imported here: the modules above are imported by the server by name.
"""

__all__: list[str] = []
