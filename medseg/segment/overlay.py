"""A PNG with a few slices of the image, the labels in their colours on top, and a legend.

The volume is only reoriented (axes permuted and flipped, never resampled) to the RAS axes closest
to its own, so that every panel shows a true anatomical plane: three axial slices through the
segmentation, one coronal and one sagittal slice through its centre, in radiological convention
(the patient's right on the left of the picture), with the voxel aspect ratio of the grid.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medseg.io.atomic import atomic_write
from medseg.io.dicom_seg import RESEARCH_ONLY

__all__ = ["render_overlay", "overlay_slices"]


def _ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    out_spacing = np.empty(3)
    for axis, (target, _flip) in enumerate(ornt):
        out_spacing[int(target)] = spacing[axis]
    return apply_orientation(volume, ornt), out_spacing


def overlay_slices(labels: np.ndarray, count: int = 3) -> list[int]:
    """Axial (last-axis) slice indices to show: spread over the labelled slices, else the centre."""
    per_slice = labels.reshape(-1, labels.shape[-1]).any(axis=0)
    present = np.flatnonzero(per_slice)
    if present.size == 0:
        return [labels.shape[-1] // 2]
    picks = np.quantile(present, np.linspace(0.2, 0.8, count)) if present.size > 1 else present
    return sorted({int(present[np.abs(present - p).argmin()]) for p in np.atleast_1d(picks)})


def render_overlay(
    image: np.ndarray,
    labelmap: np.ndarray,
    affine: np.ndarray,
    names: Mapping[int, str],
    colors: Mapping[int, Sequence[int]],
    path: str | os.PathLike,
    title: str,
    volumes_ml: Mapping[int, float] | None = None,
) -> Path:
    """Write the overlay PNG (atomically: temporary name, then rename).

    Args:
        image: the image (I, J, K) on its own grid.
        labelmap: the label map on the same grid.
        affine: voxel-to-RAS affine of that grid.
        names: label value -> name (foreground labels).
        colors: label value -> RGB (0-255).
        path: output ``.png``.
        title: first line of the figure title (the research-use notice is added).
        volumes_ml: label value -> volume for the legend.
    """
    # a bare Figure (Agg canvas): no pyplot, so a user's interactive backend and figures are left alone
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    img, spacing = _ras(np.asarray(image), affine)  # views: axes flipped/permuted, nothing copied
    lab, _ = _ras(np.asarray(labelmap), affine)
    mask = lab > 0
    centre = []
    for axis in range(3):  # centre of the labelled voxels from per-axis profiles (no coordinate list)
        profile = mask.sum(axis=tuple(a for a in range(3) if a != axis), dtype=np.int64)
        total = int(profile.sum())
        middle = lab.shape[axis] // 2
        centre.append(
            int(round(float(np.dot(profile, np.arange(len(profile))) / total))) if total else middle
        )
    x_mid, y_mid, _ = centre

    lut = np.zeros((int(max([0, *names.keys()])) + 1, 4), dtype=np.float32)
    for value, rgb in colors.items():
        lut[value, :3] = np.asarray(rgb, dtype=np.float32) / 255.0
        lut[value, 3] = 0.5

    def cut(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
        return np.take(volume, index, axis=axis)

    views = [
        (f"axial {z + 1}/{lab.shape[2]}", 2, z, spacing[1] / spacing[0], ("R", "L"))
        for z in overlay_slices(lab)
    ]
    views.append((f"coronal {y_mid + 1}/{lab.shape[1]}", 1, y_mid, spacing[2] / spacing[0], ("R", "L")))
    views.append((f"sagittal {x_mid + 1}/{lab.shape[0]}", 0, x_mid, spacing[2] / spacing[1], ("P", "A")))
    panels = [
        (name, cut(img, axis, index).astype(np.float32), cut(lab, axis, index), aspect, sides)
        for name, axis, index, aspect, sides in views
    ]
    # grey window from the shown slices only (percentiles of the whole volume would sort all of it)
    shown = np.concatenate([p[1].ravel() for p in panels])
    shown = shown[np.isfinite(shown)]
    lo, hi = np.percentile(shown, [1, 99.5]) if shown.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0

    fig = Figure(figsize=(3.2 * len(panels), 4.2), facecolor="black")
    axes = fig.subplots(1, len(panels))
    for ax, (name, im2d, lab2d, aspect, (left, right)) in zip(np.atleast_1d(axes), panels, strict=True):
        # rows of the picture: second axis (bottom to top); columns: first axis
        ax.imshow(
            im2d.T, cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=aspect, interpolation="nearest"
        )
        ax.imshow(
            lut[np.clip(lab2d.T, 0, len(lut) - 1)], origin="lower", aspect=aspect, interpolation="nearest"
        )
        if left == "R":  # radiological convention: the patient's right on the left of the picture
            ax.invert_xaxis()
        ax.set_title(name, color="white", fontsize=9)
        ax.text(0.02, 0.5, left, transform=ax.transAxes, color="yellow", fontsize=9, va="center")
        ax.text(0.95, 0.5, right, transform=ax.transAxes, color="yellow", fontsize=9, va="center")
        ax.set_axis_off()
    handles = [
        Patch(
            facecolor=np.asarray(colors[v]) / 255.0,
            label=f"{names[v]}" + (f": {volumes_ml[v]:.2f} mL" if volumes_ml and v in volumes_ml else ""),
        )
        for v in sorted(names)
    ]
    fig.legend(
        handles=handles,
        loc="lower center",
        ncol=max(1, len(handles)),
        frameon=False,
        labelcolor="white",
        fontsize=9,
    )
    fig.suptitle(f"{title}\n{RESEARCH_ONLY.upper()}", color="white", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.9))
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, facecolor="black", format="png"))
