"""Segment one 2-D photograph (PNG or JPEG) with a bundle planned on photographs.

Photographs carry no geometry: no DICOM SEG, RT structure set or NIfTI fits them. What a user
needs is the label map on the photograph's own pixels and a picture to check it by eye, so
``medseg segment photo.jpg --bundle PHOTO_BUNDLE --output OUT`` writes

* ``segmentation.png``: one grey PNG of class indices (0 background, 1, 2 ... as the bundle's labels),
  on the photograph's own size;
* ``overlay.png``: the photograph with each label's pixels tinted in its colour;
* ``report.json``: label areas (pixels and share of the image), the bundle, timings, versions.

The bundle's own ``configs/inference.json`` prepares the image (PIL loader, the planned resize to
its target size, intensity scaling) and runs its inferer; the class probabilities are then resized
back to the photograph's size (bilinear, as ``Invertd`` inverts the resize) before the argmax, so
the labels follow the photograph's pixels, not the network's grid. The files are written into a
staging folder first, so a failed run leaves no half-written file.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.bundle.core import Bundle, open_bundle
from medseg.errors import BundleError, InputError, first_line
from medseg.io.atomic import atomic_write_json
from medseg.io.formats import PHOTO_SUFFIXES, is_photo_file
from medseg.io.seg_concepts import DEFAULT_COLORS

__all__ = ["PHOTO_OUTPUT_FILES", "PhotoResult", "is_photo_bundle", "segment_photo"]

PHOTO_OUTPUT_FILES = ("segmentation.png", "overlay.png", "report.json")
# How strongly a label's colour covers the photograph in the overlay.
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class PhotoResult:
    """What :func:`segment_photo` wrote.

    Attributes:
        output_dir: the folder holding :data:`PHOTO_OUTPUT_FILES`.
        labels: the label map, ``(rows, columns)``, on the photograph's own size.
        report: the report's content.
    """

    output_dir: Path
    labels: np.ndarray
    report: dict[str, Any]


def is_photo_bundle(bundle: Bundle) -> bool:
    """True for a bundle planned on photographs (``metadata.json`` ``data_type`` ``png``)."""
    return bundle.metadata.get("data_type") == "png"


def _read_rgb(path: Path) -> np.ndarray:
    """The photograph as ``(rows, columns, 3)`` uint8 for the overlay."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as exc:
        raise InputError(f"{path} cannot be read as a photograph ({first_line(exc)}); re-export it") from exc


def _probabilities(bundle: Bundle, path: Path, device: str) -> tuple[Any, tuple[int, ...]]:
    """Softmax of the bundle's network on the prepared photograph, and the loaded (pre-resize) shape."""
    import torch

    from medseg.bundle.loader import load_inference

    loaded = load_inference(bundle, device=device)
    try:
        data = loaded.preprocessing({"image": str(path)})
    except Exception as exc:  # the bundle's transforms refuse the file
        raise InputError(f"{path} cannot be prepared for bundle {bundle.name}: {first_line(exc)}") from exc
    image = data["image"]
    original = tuple(int(s) for s in image.meta["spatial_shape"])
    with torch.no_grad():
        logits = loaded.inferer(image[None].to(device), loaded.network)
    return torch.softmax(logits.float().cpu(), dim=1), original


def _labels_on_own_size(probs: Any, original: tuple[int, ...]) -> np.ndarray:
    """Probabilities resized back to the loaded shape (bilinear), argmax, as ``(rows, columns)``.

    MONAI's PIL loader indexes ``(columns, rows)``; the label map is returned in the photograph's
    ``(rows, columns)`` order.
    """
    import torch

    if tuple(probs.shape[2:]) != original:
        probs = torch.nn.functional.interpolate(probs, size=original, mode="bilinear", align_corners=False)
    labels = torch.argmax(probs[0], dim=0).numpy().astype(np.uint8)
    return np.ascontiguousarray(labels.T)


def _overlay(rgb: np.ndarray, labels: np.ndarray, values: list[int]) -> np.ndarray:
    out = rgb.astype(np.float32)
    for number, value in enumerate(values):
        mask = labels == value
        colour = np.asarray(DEFAULT_COLORS[number % len(DEFAULT_COLORS)], dtype=np.float32)
        out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * colour
    return out.round().clip(0, 255).astype(np.uint8)


def segment_photo(
    input_path: str | os.PathLike,
    bundle: str | os.PathLike | Bundle,
    output_dir: str | os.PathLike,
    *,
    device: str = "cpu",
) -> PhotoResult:
    """Segment one photograph and write :data:`PHOTO_OUTPUT_FILES` into ``output_dir``.

    Args:
        input_path: a PNG or JPEG file.
        bundle: a bundle planned on photographs (folder, name or :class:`Bundle`).
        output_dir: the result folder (created; files already there with these names are replaced).
        device: where the network runs (``cpu``, ``cuda``).

    Raises:
        InputError: the file is not a readable PNG/JPEG.
        BundleError: the bundle was not planned on photographs, or cannot be built.
    """
    from PIL import Image

    started = time.perf_counter()
    path = Path(input_path)
    if not is_photo_file(path):
        raise InputError(f"{path} is not a photograph file ({', '.join(PHOTO_SUFFIXES)})")
    opened = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    if not is_photo_bundle(opened):
        raise BundleError(
            f"bundle {opened.name} was not planned on photographs; segment {path.name} with a bundle that "
            "medseg plan made from a PNG/JPEG dataset, or convert the image to NIfTI for a volume bundle"
        )
    rgb = _read_rgb(path)
    probs, original = _probabilities(opened, path, device)
    labels = _labels_on_own_size(probs, original)
    if labels.shape != rgb.shape[:2]:
        raise InputError(
            f"{path}: the prediction's shape {labels.shape} is not the photograph's {rgb.shape[:2]}"
        )
    names = opened.labels
    foreground = sorted(v for v in names if v != 0)
    total = int(labels.size)
    report = {
        "input": {"path": str(path), "format": "photo", "size": [int(rgb.shape[1]), int(rgb.shape[0])]},
        "bundle": {"name": opened.name, "version": opened.version},
        "labels": [
            {
                "value": v,
                "name": names[v],
                "pixels": int((labels == v).sum()),
                "fraction": round(float((labels == v).sum()) / total, 6),
            }
            for v in foreground
        ],  # fmt: skip
        "seconds": round(time.perf_counter() - started, 3),
        "versions": {"medseg": __version__},
        "research_use_only": True,
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        Image.fromarray(labels).save(staging / "segmentation.png")
        Image.fromarray(_overlay(rgb, labels, foreground)).save(staging / "overlay.png")
        atomic_write_json(staging / "report.json", report)
        for name in PHOTO_OUTPUT_FILES:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PhotoResult(out, labels, report)
