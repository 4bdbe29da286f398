"""Clicks as a network's guidance channels, the way MONAI's DeepEdit feeds them.

An interactive bundle's network reads the image and, after it, one guidance channel per label
name (the labels, then ``background``): each click is a point whose channel gets a gaussian blob
(MONAI's :class:`~monai.apps.deepedit.transforms.AddGuidanceSignalDeepEditd`, the very transform
its training used, so that a click at inference looks like a simulated one). No click leaves the
channels at zero: the network then segments on its own.

Clicks arrive as indices ``[i, j, k]`` of the stored image's voxel array (what 3D Slicer sends and
what the click protocol computes on the label's grid); the network sees the image after the
bundle's reorientation and resampling. :class:`AddClickGuidanced` maps each click through the two
affines (stored voxel -> world -> network voxel) after those transforms, so one request format
serves every bundle whatever its spacing. :func:`parse_clicks` is the one check of a request's
clicks (unknown names, malformed or outside points, too many): its messages reach HTTP clients.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from medseg.errors import InputError

__all__ = [
    "BACKGROUND",
    "MAX_CLICKS",
    "AddClickGuidanced",
    "GuidanceToJSONd",
    "guidance_label_names",
    "parse_clicks",
    "warm_start",
]

BACKGROUND = "background"
# A user clicks a handful of times per structure; thousands of points are a broken or hostile client.
MAX_CLICKS = 256


def guidance_label_names(labels: Mapping[int, str]) -> dict[str, int]:
    """DeepEdit's ``label_names`` for a bundle's labels: every foreground label, then ``background``.

    The order is the order of the guidance channels after the image's.

    Args:
        labels: ``{value: name}`` with 0 the background (as ``Bundle.labels``).
    """
    names = {str(name): int(value) for value, name in sorted(labels.items()) if int(value) != 0}
    names[BACKGROUND] = 0
    return names


def parse_clicks(
    params: Mapping[str, Any],
    label_names: Sequence[str],
    shape: Sequence[int],
    max_clicks: int = MAX_CLICKS,
) -> dict[str, list[list[int]]]:
    """Validate a request's clicks: ``{label name or "background": [[i, j, k], ...]}``.

    Keys of ``params`` that are not label names are ignored unless their value looks like a click
    list (a list of points): then the name is unknown and refused, so that a typo never silently
    drops a click.

    Args:
        params: the request's parameters.
        label_names: the names a click may carry (the bundle's labels and ``background``).
        shape: the stored image's voxel array shape (3 spatial dimensions).
        max_clicks: the most points a request may carry in all.

    Returns:
        ``{name: [[i, j, k], ...]}`` for every name of ``label_names`` (empty lists included), in order.

    Raises:
        InputError: an unknown label name, a malformed or non-integer point, a point outside the
            image, or more than ``max_clicks`` points.
    """
    known = list(label_names)
    clicks: dict[str, list[list[int]]] = {name: [] for name in known}
    total = 0
    for name, value in params.items():
        if name not in clicks:
            if _looks_like_points(value):
                raise InputError(
                    f"clicks for unknown label {name!r}: use one of {', '.join(known)}", param=str(name)
                )
            continue
        if value is None or value == []:
            continue
        if not isinstance(value, (list, tuple)):
            raise InputError(f"clicks of {name!r} must be a list of [i, j, k] points", param=str(name))
        total += len(value)
        if total > max_clicks:
            raise InputError(f"too many clicks: at most {max_clicks} points per request", param=str(name))
        for point in value:
            clicks[name].append(_point(point, name, shape))
    return clicks


def _looks_like_points(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and any(isinstance(v, (list, tuple)) for v in value)


def _point(point: Any, name: str, shape: Sequence[int]) -> list[int]:
    """One ``[i, j, k]`` point of integers inside ``shape``."""
    if not isinstance(point, (list, tuple)) or len(point) != len(shape):
        raise InputError(f"a click of {name!r} must be [i, j, k] (voxel indices), got {point!r}", param=name)
    out = []
    for value in point:
        # bool is an int in Python but never a voxel index; integral floats (3.0) are accepted
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise InputError(
                f"a click of {name!r} must hold integer voxel indices, got {point!r}", param=name
            )
        out.append(int(value))
    if any(not 0 <= v < s for v, s in zip(out, shape, strict=True)):
        raise InputError(
            f"the click {out} of {name!r} is outside the image (voxel array shape {list(shape)})", param=name
        )
    return out


class AddClickGuidanced:
    """Append the guidance channels to ``image``, from clicks given on the stored image's voxel array.

    The last transform of an interactive bundle's preprocessing: after the reorientation and
    resampling, each click ``[i, j, k]`` of ``data[guidance]`` (indices of the array as it was
    read) is moved to the current grid through ``image.meta["original_affine"]`` and the
    image's current affine, then MONAI's ``AddGuidanceSignalDeepEditd`` draws the channels. Without
    ``data[guidance]`` (plain segmentation, validation) every guidance channel is zero. The image's
    metadata and applied operations are kept, so ``Invertd`` still brings predictions back.

    Args:
        keys: the image key (one).
        label_names: DeepEdit's ``{name: value}`` (:func:`guidance_label_names`): one channel per name.
        guidance: the key holding the clicks.
        sigma: the gaussian's standard deviation in voxels (as in training).
        number_intensity_ch: the image channels before the guidance channels.
    """

    def __init__(
        self,
        keys: Hashable,
        label_names: Mapping[str, int],
        guidance: str = "guidance",
        sigma: int = 3,
        number_intensity_ch: int = 1,
    ) -> None:
        from monai.apps.deepedit.transforms import AddGuidanceSignalDeepEditd

        self.key = keys if isinstance(keys, str) else next(iter(keys))  # type: ignore[arg-type]
        self.label_names = dict(label_names)
        self.guidance = guidance
        self.number_intensity_ch = number_intensity_ch
        self.signal = AddGuidanceSignalDeepEditd(
            keys="image", guidance="guidance", sigma=sigma, number_intensity_ch=number_intensity_ch
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import torch
        from monai.data import MetaTensor

        d = dict(data)
        image = d[self.key]
        clicks = d.get(self.guidance) or {}
        to_grid = _stored_to_current(image)
        spatial = tuple(int(s) for s in image.shape[1:])
        guidance = {
            name: [_to_grid(p, to_grid, spatial) for p in clicks.get(name, [])] for name in self.label_names
        }
        intensity = np.asarray(image[: self.number_intensity_ch].detach().cpu(), dtype=np.float32)
        signals = self.signal({"image": intensity, "guidance": guidance})["image"][self.number_intensity_ch :]
        channels = torch.as_tensor(np.ascontiguousarray(signals), dtype=image.dtype)
        joined = torch.cat([image[: self.number_intensity_ch].as_tensor() if isinstance(image, MetaTensor)
                            else torch.as_tensor(image[: self.number_intensity_ch]), channels])  # fmt: skip
        if isinstance(image, MetaTensor):
            joined = MetaTensor(joined, meta=image.meta, applied_operations=image.applied_operations)
        d[self.key] = joined
        return d


class GuidanceToJSONd:
    """Write each label's clicks as a JSON string of integer points, as DeepEdit's initial seeds are.

    Between two simulated interactions MONAI's ``Interaction`` collates and decollates the batch,
    which turns a label's empty click list into ``None`` (and ``AddRandomGuidanceDeepEditd`` then
    fails); DeepEdit's transforms read JSON strings as well as lists, and strings survive collation.

    Args:
        guidance: the key holding ``{label name: points}``.
    """

    def __init__(self, guidance: str = "guidance") -> None:
        self.guidance = guidance

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        import json

        d = dict(data)
        d[self.guidance] = {
            name: points
            if isinstance(points, str)
            else json.dumps([[int(v) for v in p] for p in points or []])
            for name, points in d[self.guidance].items()
        }
        return d


def warm_start(network: Any, path: str | None) -> Any:
    """Start an interactive network from a plain bundle's weights of the same architecture.

    Every tensor is copied; where the interactive network has more input channels (its first
    convolutions, which also read the guidance channels) the image's channels are copied and the
    guidance channels' weights start at zero, so that before any training the network is the plain
    bundle and training only has to learn what clicks add.

    Args:
        network: the interactive network (changed in place).
        path: a plain bundle's ``models/model.pt``; None leaves the network as it is.

    Returns:
        ``network``.

    Raises:
        BundleError: the weights belong to another architecture.
    """
    import torch

    from medseg.bundle.loader import read_state_dict
    from medseg.errors import BundleError

    if not path:
        return network
    source = read_state_dict(path)
    target = network.state_dict()
    if set(source) != set(target):
        raise BundleError(
            f"warm start: {path} holds another architecture's weights; plan the interactive bundle with the "
            "same network (plans/overrides.json) or train without a warm start"
        )
    merged = {}
    for name, value in target.items():
        old = source[name]
        if old.shape == value.shape:
            merged[name] = old
        elif (
            old.dim() == value.dim() > 1
            and old.shape[0] == value.shape[0]
            and old.shape[2:] == value.shape[2:]
        ):
            grown = torch.zeros_like(value)
            grown[:, : old.shape[1]] = old
            merged[name] = grown
        else:
            raise BundleError(
                f"warm start: {name} is {tuple(old.shape)} in {path}, {tuple(value.shape)} here"
            )
    network.load_state_dict(merged)
    return network


def _stored_to_current(image: Any) -> np.ndarray | None:
    """The 4x4 map from the stored array's voxel indices to the current grid's, when metadata tells it."""
    meta = getattr(image, "meta", None) or {}
    original = meta.get("original_affine")
    if original is None:
        return None
    current = np.asarray(image.affine, dtype=float)
    return np.linalg.inv(current) @ np.asarray(original, dtype=float)


def _to_grid(point: Sequence[int], to_grid: np.ndarray | None, shape: Sequence[int]) -> list[int]:
    """A stored-array click on the current grid: rounded to the nearest voxel, kept inside."""
    p = np.asarray(point[-3:], dtype=float)
    if to_grid is not None:
        p = (to_grid @ np.append(p, 1.0))[:3]
    return [int(min(max(round(float(v)), 0), s - 1)) for v, s in zip(p, shape, strict=True)]
