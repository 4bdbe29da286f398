"""DICOM SEG of a served bundle's label map, for ``POST /infer/{model}?output=dicom_seg`` and for
labels submitted to a DICOMweb datastore (``PUT /datastore/label``).

The stock MONAI Label conversion codes every segment as spleen and shells out to dcmqi's
``itkimage2segimage``; here the project's writer (:func:`medseg.segment.write_seg`) writes one
segment per bundle label with the bundle's label names and coded concepts
(:func:`medseg.segment.segment_specs`), referencing the source instances.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import medseg
from medseg.bundle.core import open_bundle
from medseg.errors import GeometryError

__all__ = ["label_file_to_seg"]


def label_file_to_seg(
    label_file: str | os.PathLike,
    series_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    bundle_path: str | os.PathLike,
    weights: str = "",
    corrected: bool = False,
) -> dict[str, str]:
    """Write the DICOM SEG of a label file that lies on the grid of the series in ``series_dir``.

    Args:
        label_file: the label map (NIfTI) the inference wrote, on the series' grid.
        series_dir: folder of the source series' instances.
        out_path: the SEG file to write.
        bundle_path: the served bundle (label names, codes, version).
        weights: the weights file used (recorded in the algorithm version).
        corrected: the label map is a label a person submitted (``PUT /datastore/label``), not a
            model's output: segments are SEMIAUTOMATIC and the series is described as a label, so
            that the datastore tells labels from inference results.

    Returns:
        ``series_instance_uid`` and ``sop_instance_uid`` of the SEG.

    Raises:
        GeometryError: the label map is not on the series' grid (shape or affine differ).
    """
    from medseg.io import load_image
    from medseg.io.image import read_image
    from medseg.segment import segment_specs, write_seg

    image = load_image(series_dir)
    label, label_meta = read_image(label_file)
    label = np.asarray(label)
    if label.ndim == 4 and label.shape[0] == 1:
        label = label[0]
    if tuple(label.shape) != tuple(image.shape):
        raise GeometryError(f"label map {label.shape} is not on the series grid {tuple(image.shape)}")
    if not np.allclose(np.asarray(label_meta["affine"], dtype=float), image.affine.numpy(), atol=1e-3):
        raise GeometryError("the label map's affine differs from the series' affine")
    bundle = open_bundle(Path(bundle_path))
    version = bundle.version + (f" ({weights})" if weights else "")
    return write_seg(
        np.rint(label).astype(np.int32),
        image.meta,
        segment_specs(bundle.labels, bundle.metadata),
        out_path,
        algorithm_name=bundle.name,
        algorithm_version=version,
        software_versions=f"medseg {medseg.__version__}",
        algorithm_type="SEMIAUTOMATIC" if corrected else "AUTOMATIC",
        series_description=f"{bundle.name} label" if corrected else None,
    )
