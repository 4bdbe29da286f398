"""Classical (pre-deep-learning) segmentation baselines: Otsu, region growing, k-means.

They follow the contract of a network prediction: an integer label map on the image
grid. Input is a numpy array (all axes spatial, 2D or 3D) or a torch tensor /
:class:`monai.data.MetaTensor` in MONAI's channel-first layout ``(1, *spatial)``; the
output has the input's type and shape with dtype ``uint8`` (a MetaTensor keeps its affine
and metadata).

Intensity methods find tissue classes, not anatomy. To compare them with an anatomical
label map of ``num_classes - 1`` foreground labels (the MSD hippocampus has 1 = anterior,
2 = posterior), ``mode="position"`` does the following, the same for every method:

1. foreground: the intensity class (Otsu, k-means) or grown region (region growing) at
   the image centre -- the MSD hippocampus crops are centred on the hippocampus, so the
   centre is the only prior used;
2. split: the foreground voxels are cut along the anterior-posterior axis into
   ``num_classes - 1`` slabs of equal voxel count (for two labels, at the median plane;
   anterior and posterior hippocampus have about equal volumes), labelled 1, 2, ... from
   anterior to posterior.

The anterior-posterior axis is taken from a MetaTensor's affine (world axis 1, RAS); for
numpy input it is array axis 1 with anterior at higher indices, which holds for the MSD
hippocampus arrays read with nibabel (i, j, k) as well as with SimpleITK (k, j, i).
``mode="intensity"`` instead returns the intensity classes themselves (0 = darkest), the
textbook output of multi-class Otsu and k-means.

These baselines are expected to score low on anatomical structures of grey-matter
intensity such as the hippocampus: that is their purpose, a floor for the networks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from scipy.cluster.vq import kmeans2

__all__ = [
    "otsu_segment",
    "region_growing_segment",
    "kmeans_segment",
    "split_foreground",
    "default_seed",
]

ImageT = TypeVar("ImageT", np.ndarray, torch.Tensor)

_CENTRE_RADIUS = 2  # half-width of the central cube whose majority class is the foreground


def _to_array(image: np.ndarray | torch.Tensor) -> tuple[np.ndarray, tuple[int, bool] | None]:
    """Spatial float32 array of the image and the anterior-posterior axis implied by its affine."""
    if isinstance(image, torch.Tensor):
        if image.dim() < 3 or image.shape[0] != 1:
            raise ValueError(
                f"a tensor image must be channel-first with one channel (1, *spatial), got shape {tuple(image.shape)}."
            )
        array = image.detach().cpu().numpy()[0]
        return array.astype(np.float32, copy=False), _ap_axis_from_affine(image, array.ndim)
    array = np.asarray(image)
    if array.ndim not in (2, 3):
        raise ValueError(f"a numpy image must be 2D or 3D (spatial axes only), got shape {array.shape}.")
    return array.astype(np.float32, copy=False), None


def _ap_axis_from_affine(image: torch.Tensor, spatial_dims: int) -> tuple[int, bool] | None:
    """(array axis, anterior at higher index) from a MetaTensor affine in RAS (or LPS) space."""
    affine = getattr(image, "affine", None)
    if affine is None or spatial_dims < 2:
        return None
    matrix = np.asarray(affine, dtype=np.float64)[:spatial_dims, :spatial_dims]
    axis = int(np.argmax(np.abs(matrix[1])))
    increasing = bool(matrix[1, axis] > 0)
    space = str(getattr(image, "meta", {}).get("space", "RAS")).upper()
    if space == "LPS":  # world +y is posterior
        increasing = not increasing
    return axis, increasing


def _wrap(labels: np.ndarray, like: ImageT) -> ImageT:
    """Return ``labels`` in the container type of ``like`` (MetaTensor meta is kept)."""
    labels = labels.astype(np.uint8, copy=False)
    if isinstance(like, torch.Tensor):
        out = torch.as_tensor(labels[None], device=like.device)
        if isinstance(like, MetaTensor):
            # meta holds the affine; applied_operations keep the output invertible like the input
            return MetaTensor(  # type: ignore[return-value]
                out, meta=dict(like.meta), applied_operations=list(like.applied_operations)
            )
        return out  # type: ignore[return-value]
    return labels  # type: ignore[return-value]


def default_seed(shape: Sequence[int]) -> tuple[int, ...]:
    """The default seed of region growing and foreground prior: the image centre (array index)."""
    return tuple(int(s) // 2 for s in shape)


def _centre_class(classes: np.ndarray, num: int) -> int:
    """Majority class in the central ``(2r+1)^n`` cube of a class map."""
    centre = default_seed(classes.shape)
    window = tuple(slice(max(0, c - _CENTRE_RADIUS), c + _CENTRE_RADIUS + 1) for c in centre)
    return int(np.bincount(classes[window].ravel(), minlength=num).argmax())


def split_foreground(
    mask: np.ndarray, num_labels: int, axis: int = 1, anterior_high: bool = True
) -> np.ndarray:
    """Label a foreground mask 1..``num_labels`` by position along ``axis``.

    The foreground voxels are cut into ``num_labels`` slabs of equal voxel count (quantiles
    of their coordinate along ``axis``); label 1 is the slab at the anterior end.

    Args:
        mask: boolean foreground mask.
        num_labels: number of foreground labels (>= 1).
        axis: array axis along which to split (anterior-posterior).
        anterior_high: anterior is at higher indices along ``axis`` (label 1 = highest slab).

    Returns:
        ``uint8`` label map, 0 outside the mask.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}.")
    labels = np.zeros(mask.shape, dtype=np.uint8)
    if not mask.any():
        return labels
    if num_labels == 1:
        labels[mask] = 1
        return labels
    coords = np.nonzero(mask)[axis].astype(np.float64)
    if anterior_high:
        coords = -coords
    # slab k holds coordinates in [q_k, q_{k+1}); ties at a cut go to the anterior slab
    cuts = np.quantile(coords, np.arange(1, num_labels) / num_labels)
    labels[mask] = (np.searchsorted(cuts, coords, side="left") + 1).astype(np.uint8)
    return labels


def _position_labels(
    foreground: np.ndarray, num_classes: int, ap: tuple[int, bool] | None, split_axis: int | None
) -> np.ndarray:
    axis, high = ap if ap is not None else (1, True)
    if split_axis is not None:
        axis = split_axis
    if axis >= foreground.ndim:
        axis = foreground.ndim - 1
    return split_foreground(foreground, num_classes - 1, axis=axis, anterior_high=high)


def _check(num_classes: int, mode: str) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes (background included) must be >= 2, got {num_classes}.")
    if mode not in ("position", "intensity"):
        raise ValueError(f"mode must be 'position' or 'intensity', got {mode!r}.")


def otsu_segment(
    image: ImageT,
    num_classes: int = 3,
    mode: str = "position",
    intensity_classes: int = 3,
    num_bins: int = 128,
    split_axis: int | None = None,
) -> ImageT:
    """Multiple Otsu thresholding (SimpleITK ``OtsuMultipleThresholdsImageFilter``).

    Args:
        image: numpy array (spatial axes) or tensor/MetaTensor ``(1, *spatial)``.
        num_classes: classes of the output, background included.
        mode: ``"position"``: foreground = the Otsu class at the image centre (from
            ``intensity_classes`` classes, i.e. ``intensity_classes - 1`` thresholds), split
            into ``num_classes - 1`` labels along the anterior-posterior axis (see the module
            docstring); ``"intensity"``: the ``num_classes`` Otsu classes, 0 = darkest.
        intensity_classes: Otsu classes for ``mode="position"`` (3: CSF, grey, white matter).
        num_bins: histogram bins of Otsu's criterion.
        split_axis: array axis of the split, overriding the affine / default (axis 1).

    Returns:
        ``uint8`` label map of the input's type and shape.
    """
    _check(num_classes, mode)
    array, ap = _to_array(image)
    k = num_classes if mode == "intensity" else intensity_classes
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(k - 1)
    otsu.SetNumberOfHistogramBins(num_bins)
    classes = sitk.GetArrayFromImage(otsu.Execute(sitk.GetImageFromArray(array))).astype(np.int64)
    if mode == "intensity":
        return _wrap(classes, image)
    foreground = classes == _centre_class(classes, k)
    return _wrap(_position_labels(foreground, num_classes, ap, split_axis), image)


def region_growing_segment(
    image: ImageT,
    seeds: Sequence[Sequence[int]] | None = None,
    num_classes: int = 3,
    method: str = "confidence",
    multiplier: float = 2.5,
    iterations: int = 5,
    radius: int = 2,
    lower: float | None = None,
    upper: float | None = None,
    split_axis: int | None = None,
) -> ImageT:
    """Seeded region growing (SimpleITK ``ConfidenceConnected`` or ``ConnectedThreshold``).

    The grown region is the foreground; it is split into ``num_classes - 1`` labels along
    the anterior-posterior axis (see the module docstring).

    Args:
        image: numpy array (spatial axes) or tensor/MetaTensor ``(1, *spatial)``.
        seeds: seed voxels as array indices (in the order of the array's spatial axes);
            default: the image centre (:func:`default_seed`), since the MSD hippocampus
            crops are centred on the structure.
        num_classes: classes of the output, background included.
        method: ``"confidence"``: grow while intensities lie within ``multiplier`` standard
            deviations of the region's mean, re-estimated ``iterations`` times from a
            ``radius`` neighbourhood of the seeds at first (the values of ITK's software
            guide); ``"threshold"``: grow while intensities lie in ``[lower, upper]``
            (default: seed-neighbourhood mean +- 2 standard deviations).
        multiplier: ``ConfidenceConnected`` multiplier.
        iterations: ``ConfidenceConnected`` iterations.
        radius: initial neighbourhood radius around the seeds.
        lower: lower threshold of ``"threshold"``.
        upper: upper threshold of ``"threshold"``.
        split_axis: array axis of the split, overriding the affine / default (axis 1).

    Returns:
        ``uint8`` label map of the input's type and shape.
    """
    _check(num_classes, "position")
    array, ap = _to_array(image)
    if seeds is None:
        seeds = [default_seed(array.shape)]
    for seed in seeds:
        if len(seed) != array.ndim or any(
            not 0 <= int(s) < n for s, n in zip(seed, array.shape, strict=True)
        ):
            raise ValueError(f"seed {tuple(seed)} is not an index of an image of shape {array.shape}.")
    sitk_seeds = [tuple(int(s) for s in reversed(seed)) for seed in seeds]  # SimpleITK indexes (x, y, z)
    itk_image = sitk.GetImageFromArray(array)
    if method == "confidence":
        region = sitk.ConfidenceConnected(
            itk_image,
            seedList=sitk_seeds,
            numberOfIterations=iterations,
            multiplier=multiplier,
            initialNeighborhoodRadius=radius,
            replaceValue=1,
        )
    elif method == "threshold":
        if lower is None or upper is None:
            window = np.concatenate([_neighbourhood(array, seed, radius) for seed in seeds])
            mean, std = float(window.mean()), float(window.std())
            lower = mean - 2 * std if lower is None else lower
            upper = mean + 2 * std if upper is None else upper
        region = sitk.ConnectedThreshold(
            itk_image, seedList=sitk_seeds, lower=lower, upper=upper, replaceValue=1
        )
    else:
        raise ValueError(f"method must be 'confidence' or 'threshold', got {method!r}.")
    foreground = sitk.GetArrayFromImage(region) > 0
    return _wrap(_position_labels(foreground, num_classes, ap, split_axis), image)


def _neighbourhood(array: np.ndarray, seed: Sequence[int], radius: int) -> np.ndarray:
    window = tuple(slice(max(0, int(c) - radius), int(c) + radius + 1) for c in seed)
    return array[window].ravel()


def kmeans_segment(
    image: ImageT,
    num_classes: int = 3,
    mode: str = "position",
    intensity_classes: int = 3,
    iterations: int = 50,
    split_axis: int | None = None,
) -> ImageT:
    """k-means clustering of intensities (``scipy.cluster.vq.kmeans2``), clusters ordered by mean.

    The centroids start at evenly spaced intensity quantiles, so the result is
    deterministic.

    Args:
        image: numpy array (spatial axes) or tensor/MetaTensor ``(1, *spatial)``.
        num_classes: classes of the output, background included.
        mode: ``"position"``: foreground = the cluster at the image centre (of
            ``intensity_classes`` clusters), split along the anterior-posterior axis (see the
            module docstring); ``"intensity"``: the ``num_classes`` clusters, 0 = darkest.
        intensity_classes: clusters for ``mode="position"``.
        iterations: Lloyd iterations.
        split_axis: array axis of the split, overriding the affine / default (axis 1).

    Returns:
        ``uint8`` label map of the input's type and shape.
    """
    _check(num_classes, mode)
    array, ap = _to_array(image)
    k = num_classes if mode == "intensity" else intensity_classes
    data = array.reshape(-1, 1).astype(np.float64)
    init = np.quantile(data[:, 0], (np.arange(k) + 0.5) / k).reshape(k, 1)
    centroids, assignment = _kmeans(data, init, iterations)
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(centroids[:, 0], kind="stable")] = np.arange(k)  # 0 = darkest cluster
    classes = rank[assignment].reshape(array.shape)
    if mode == "intensity":
        return _wrap(classes, image)
    foreground = classes == _centre_class(classes, k)
    return _wrap(_position_labels(foreground, num_classes, ap, split_axis), image)


def _kmeans(data: np.ndarray, init: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    with warnings.catch_warnings():
        # an empty cluster (few distinct intensities) keeps its centroid; scipy warns about it
        warnings.simplefilter("ignore", UserWarning)
        return kmeans2(data, init, iter=iterations, minit="matrix", missing="warn")
