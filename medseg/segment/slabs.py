"""Sliding-window inference slab by slab: the class per voxel without the whole probability volume.

MONAI's ``SlidingWindowInferer`` stitches the network's output for the whole network grid: C
channels of float32 plus a weight map, the largest buffer of ``medseg segment`` (3 channels on a
390x390x347 grid are 0.8 GB). For very large series (``low_memory``), :func:`slab_argmax` runs the
same inferer on slabs along the last axis and keeps only the argmax of each slab's finished planes.

It changes nothing in the result: every slab starts and ends on the window positions the whole
volume would use (MONAI's ``dense_patch_slices``), so a plane is taken from a slab only when all
the windows that cover it in the whole volume are in that slab, with the same weights, added in
the same order. The price is that windows at slab borders run twice: with ``windows`` windows per
slab along the axis and overlap 0.5, ``windows / (windows - 1)`` of the forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["slab_argmax", "window_starts"]


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window start positions along one axis, as MONAI's sliding window places them.

    Args:
        size: the axis length (at least ``roi``).
        roi: the window length along the axis.
        overlap: the inferer's overlap along the axis.
    """
    if roi >= size:
        return [0]
    interval = max(int(roi * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(size / interval)) if d * interval + roi >= size) + 1
    return [min(d * interval, size - roi) for d in range(count)]


def _axis_setting(value: Any, dims: int) -> float:
    """The last spatial axis' entry of a per-axis setting (a scalar applies to every axis)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return float(list(value)[dims - 1])
    return float(value)


def slab_argmax(
    inputs: torch.Tensor,
    network: Callable[[torch.Tensor], torch.Tensor],
    inferer: Any,
    argmax: Callable[[torch.Tensor], torch.Tensor],
    windows: int = 4,
) -> torch.Tensor | None:
    """``argmax(inferer(inputs, network))`` computed over slabs of the last axis.

    Args:
        inputs: the (1, C, *spatial) network input.
        network: the predictor.
        inferer: a MONAI ``SlidingWindowInferer`` (its roi, overlap, batch and blending are used).
        argmax: maps one (C, *spatial) score tensor to labels (:func:`medseg.postprocess.argmax_channels`).
        windows: window positions per slab along the last axis (at least ``roi / interval + 1``).

    Returns:
        The (*spatial) labels, or None when the volume is one slab anyway (run the inferer as usual).
    """
    from monai.utils import fall_back_tuple

    spatial = list(inputs.shape[2:])
    dims = len(spatial)
    roi = fall_back_tuple(inferer.roi_size, spatial)[-1]
    size = spatial[-1]
    starts = window_starts(size, roi, _axis_setting(inferer.overlap, dims))
    interval = starts[1] - starts[0] if len(starts) > 1 else roi
    per_slab = max(int(windows), math.ceil(roi / interval) + 1)
    if len(starts) <= per_slab:
        return None
    labels: torch.Tensor | None = None
    first, done = 0, 0  # the slab's first window; the planes finished so far
    while done < size:
        last = min(first + per_slab - 1, len(starts) - 1)
        begin, end = starts[first], starts[last] + roi if last < len(starts) - 1 else size
        # the slab's own window positions must be the whole volume's: else the result would differ
        own = [begin + s for s in window_starts(end - begin, roi, _axis_setting(inferer.overlap, dims))]
        if own != starts[first : last + 1]:
            raise RuntimeError(
                f"slab [{begin}, {end}) places windows at {own}, not {starts[first : last + 1]}"
            )
        exact_to = starts[last + 1] if last < len(starts) - 1 else size  # planes no later window covers
        scores = inferer(inputs[..., begin:end], network)
        part = argmax(scores[0, ..., done - begin : exact_to - begin])
        del scores
        if labels is None:
            labels = torch.empty((*spatial[:-1], size), dtype=part.dtype)
        labels[..., done:exact_to] = part
        done = exact_to
        # the next slab starts at the first window that covers a plane not finished yet
        first = next(i for i, s in enumerate(starts) if s + roi > done) if done < size else first
    assert labels is not None
    return labels
