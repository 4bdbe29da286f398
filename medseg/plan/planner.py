"""Plan a bundle from a dataset fingerprint: nnU-Net v2's rules, plus a CPU time budget.

Every planned value is recorded with the rule that produced it and the data behind it
(``{"value": ..., "rule": "...", "data": {...}}``), so ``medseg plan --explain`` can say why, and
a bundle can later be re-rendered from its ``plans/plan.json`` without the data.

The rules follow nnU-Net v2's ``ExperimentPlanner`` (``default_experiment_planner.py``):

* target spacing: the median spacing; along an axis much coarser than the others (anisotropy:
  > 3x the finest spacing, and < 1/3 of the voxels of the other axes) the 10th percentile instead;
* normalisation by modality (``preprocessing/normalization``): CT clips to the foreground's 0.5 and
  99.5 percentiles and z-scores with the dataset's foreground mean and std; MR and others z-score
  each image on its own, inside its nonzero region when cropping to it shrinks the images by more
  than a quarter; RGB photographs are scaled to [0, 1];
* patch size: a volume of 256^3 (2-D: 2048^2) voxels shaped by the spacing, clipped to the median
  image shape; the network's downsampling (network depth and per-axis strides) from nnU-Net's
  ``get_pool_and_conv_props`` (pool an axis while its feature map stays >= 8 voxels and its
  spacing is within 2x of the finest one), the patch padded to a multiple of the total stride;
* batch size: what the budget allows, at least 2, and at most 5 % of the dataset's voxels per batch.

The compute budget decides how large a network and patch fit (one class per kind of budget in
:mod:`medseg.plan.budget`):

* ``gpu``: memory. nnU-Net's reference is an 8 GB GPU; medseg estimates a training step's memory
  from the network itself (the tensors autograd saves for the backward pass, counted on PyTorch's
  ``meta`` device without computing anything, plus weights, gradients and two AdamW moments, plus
  1 GiB for the CUDA context and workspaces) and shrinks the patch until a batch of 2 fits. The
  default GPU network is nnU-Net's residual-encoder U-Net, planned with the ResEnc preset of the
  GPU's memory (below 16 GB M, below 32 GB L, else XL): the same network at every size, a larger
  patch and batch on a larger GPU, a batch of up to the whole dataset's voxels.
* ``cpu``: time. A CPU training must converge within a wall-clock budget (default 15 minutes), so
  a training step may take ``budget / (MIN_EPOCHS x steps per epoch)``; a step's time is estimated
  from the network's floating-point operations (counted on the ``meta`` device) at a throughput
  calibrated on the measured hippocampus recipe, or, with a :class:`~medseg.plan.cost.StepTimer`
  (``medseg plan --measure``), measured: real training steps of the candidates the model predicts
  to fit, timed on this machine and cached. When the nnU-Net-width network does not fit, lighter
  ones are tried (the plan says so), then a smaller patch.

:func:`make_plan` is a short orchestrator over one function per planned value (``_plan_<name>``);
the candidates are searched once (:func:`_search`), each network is sized and built through the
registry of :mod:`medseg.networks.registry` (its ``network_def``, total stride and CPU layout), and
the recorded overrides are applied last (:mod:`medseg.plan.overrides`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.networks.registry import Design, NetworkSpec, network_spec, network_specs, total_stride
from medseg.plan.budget import (
    BUDGETS,
    DEFAULT_CPU_MINUTES,
    MIN_BATCH_SIZE,
    MIN_EPOCHS,
    REFERENCE_CPU_GFLOPS,
    REFERENCE_GPU_MEMORY_GB,
    Assessment,
    Budget,
    Width,
    make_budget,
)
from medseg.plan.cost import MEASURED_ITEMS, StepTimer, estimate_step
from medseg.plan.overrides import (
    WHY_KEY,
    apply_overrides,
    check_concepts,
    metadata_text,
    override_labels,
    split_overrides,
)
from medseg.plan.resolution import Resolution, choose_resolution
from medseg.plan.values import planned as _value
from medseg.plan.values import rounded as _r
from medseg.render.records import Plan, installed_versions

__all__ = [
    "PLAN_VERSION",
    "NETWORK_NAMES",
    "TARGETS",
    "REFERENCE_GPU_MEMORY_GB",
    "REFERENCE_CPU_GFLOPS",
    "DEFAULT_CPU_MINUTES",
    "MIN_EPOCHS",
    "Topology",
    "get_pool_and_conv_props",
    "target_spacing",
    "estimate_step",
    "make_plan",
    "apply_overrides",
    "explain",
]

PLAN_VERSION = 1
NETWORK_NAMES = tuple(spec.name for spec in network_specs())
TARGETS = tuple(BUDGETS)

# nnU-Net v2's constants (default_experiment_planner.py).
ANISOTROPY_THRESHOLD = 3.0
FEATUREMAP_MIN_EDGE = 4
REFERENCE_PATCH_VOXELS = {3: 256**3, 2: 2048**2}
NONZERO_CROP_THRESHOLD = 0.75
MAX_FEATURES = {3: 320, 2: 512}
# A 2-D network on volumes (hippocampus_unet2d's recipe): 8 random slices of each volume per epoch.
SLICES_PER_VOLUME = 8
# Cosine-decayed AdamW with a weight EMA: the recipe that reached fold-0 Dice 0.885 in 15 minutes.
LEARNING_RATE = 5e-3
# A 2-D network on 2-D images (photographs, batch 8): on Kvasir-SEG dev, 8 minutes, the same network and
# batch reached fold-1 Dice 0.615-0.618 with AdamW 1e-3 against 0.550-0.554 with 5e-3 (with and
# without the random affine), the naive 2-D recipe's rate against the hippocampus recipe's.
IMAGE_LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-5
EMA_DECAY = 0.999
# The fixed split's test-fold rule: fold 0 is the test fold no decision sees; fold 1 validates
# (monitoring; any choice made on it is legitimate), folds 2-4 train.
NUM_FOLDS = 5
TEST_FOLD = 0
VAL_FOLD = 1
TRAIN_FOLDS = (2, 3, 4)
# A foreground class covering less than this fraction of the dataset's voxels is rare.
RARE_CLASS_FRACTION = 0.005
MAX_CLASS_WEIGHT = 10.0
# Mirroring is safe along an axis when at least this share of cases leans each way.
MIRROR_MINORITY_SHARE = 0.25
# ... leaning clearly: |skewness of the foreground coordinates| at least this.
MIRROR_MIN_SKEWNESS = 0.1
_MODALITY_CODES = {"ct": "CT", "mr": "MR", "mri": "MR", "pet": "PT", "pt": "PT", "us": "US", "xr": "DX"}
_MR_NAMES = ("t1", "t2", "flair", "adc", "dwi", "pd", "lge", "swi", "bold", "mprage")
_DATASET_FIELDS = (
    "name",
    "layout",
    "spatial_dims",
    "channels",
    "file_ending",
    "num_cases",
    "licence",
    "reference",
    "description",
)


@dataclass(frozen=True)
class Topology:
    """Downsampling of an encoder-decoder network for a patch (nnU-Net's ``get_pool_and_conv_props``).

    Attributes:
        pools_per_axis: how often each axis is halved.
        strides: per level, the stride of each axis (1 or 2), deepest last.
        patch_size: the patch padded to a multiple of the total stride.
    """

    pools_per_axis: tuple[int, ...]
    strides: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]

    @property
    def divisor(self) -> tuple[int, ...]:
        return tuple(2**p for p in self.pools_per_axis)


def get_pool_and_conv_props(
    spacing: Sequence[float], patch_size: Sequence[int], min_edge: int = FEATUREMAP_MIN_EDGE
) -> Topology:
    """Strides of each network level for a patch, as nnU-Net v2 plans them.

    An axis is halved while its feature map keeps at least ``2 * min_edge`` voxels and its current
    spacing is within 2x of the finest current spacing (so anisotropic axes wait until the others
    have caught up); a lone poolable axis needs ``3 * min_edge`` voxels. The patch is then padded
    to a multiple of the total stride.

    Args:
        spacing: voxel spacing of the patch's axes (mm).
        patch_size: the patch (voxels).
        min_edge: the smallest feature map edge at the bottom of the network.
    """
    dims = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(s) for s in patch_size]
    pools = [0] * dims
    strides: list[tuple[int, ...]] = []
    while True:
        valid = [i for i in range(dims) if current_size[i] >= 2 * min_edge]
        if not valid:
            break
        finest = min(current_spacing[i] for i in valid)
        valid = [i for i in valid if current_spacing[i] / finest < 2]
        if len(valid) == 1 and current_size[valid[0]] < 3 * min_edge:
            break
        if not valid:
            break
        stride = tuple(2 if i in valid else 1 for i in range(dims))
        for i in valid:
            pools[i] += 1
            current_spacing[i] *= 2
            current_size[i] = math.ceil(current_size[i] / 2)
        strides.append(stride)
    divisor = [2**p for p in pools]
    padded = tuple(int(math.ceil(s / d) * d) for s, d in zip(patch_size, divisor, strict=True))
    return Topology(tuple(pools), tuple(strides), padded)


def target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> tuple[list[float], str, dict[str, Any]]:
    """nnU-Net v2's full-resolution target spacing: the median, unless one axis is anisotropic.

    Args:
        spacings: ``(cases, axes)`` voxel spacings.
        shapes: ``(cases, axes)`` image shapes.

    Returns:
        The spacing, the rule that chose it, and the data behind it.
    """
    target = np.median(spacings, axis=0)
    median_shape = np.median(shapes, axis=0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    data: dict[str, Any] = {
        "median_spacing": [_r(s) for s in target],
        "median_shape": [_r(s) for s in median_shape],
    }
    rule = "median spacing of the cases along each axis (nnU-Net v2)"
    if others:
        aniso_spacing = target[worst] > ANISOTROPY_THRESHOLD * min(target[others])
        aniso_voxels = median_shape[worst] * ANISOTROPY_THRESHOLD < min(median_shape[others])
        if aniso_spacing and aniso_voxels:
            low = float(np.percentile(spacings[:, worst], 10))
            low = max(low, float(max(target[others])) + 1e-5) if low < max(target[others]) else low
            target[worst] = low
            data["anisotropic_axis"] = worst
            rule += (
                f"; axis {worst} is anisotropic (spacing > {ANISOTROPY_THRESHOLD:g}x the finest and fewer than "
                f"1/{ANISOTROPY_THRESHOLD:g} of its voxels), so its 10th percentile spacing is used instead, "
                "to resample fewer cases coarsely"
            )
    return [_r(s, 6) for s in target], rule, data


# -- normalisation ------------------------------------------------------------------------------


def _channel_kind(name: str, rgb: bool) -> str:
    lowered = name.strip().lower()
    if rgb:
        return "rgb"
    if lowered == "ct" or lowered.startswith("ct ") or lowered.startswith("ct_"):
        return "ct"
    if lowered in ("mr", "mri") or lowered.startswith(("mr ", "mri ", "mr_")) or lowered in _MR_NAMES:
        return "mr"
    return "other"


def _normalization(fp: Mapping[str, Any], rgb: bool) -> dict[str, Any]:
    cases = fp["cases"]
    ratios = [
        float(np.prod(c["shape_after_crop"]) / max(1, np.prod(c["shape"])))  # fraction kept by the crop
        for c in cases
    ]
    median_ratio = float(np.median(ratios))
    use_nonzero = median_ratio < NONZERO_CROP_THRESHOLD
    channels = []
    for key, name in fp["dataset"]["channels"].items():
        kind = _channel_kind(name, rgb)
        stats = fp["foreground_intensity"][key]
        if kind == "ct":
            channels.append(
                {
                    "channel": name,
                    "scheme": "ct",
                    "clip": [stats["percentile_00_5"], stats["percentile_99_5"]],
                    "mean": stats["mean"],
                    "std": max(stats["std"], 1e-8),
                }
            )
        elif kind == "rgb":
            channels.append({"channel": name, "scheme": "rgb_to_0_1", "scale": 1 / 255})
        else:
            channels.append({"channel": name, "scheme": "zscore", "nonzero": use_nonzero})
    rule = (
        "by modality (nnU-Net v2): CT is clipped to the dataset's foreground 0.5/99.5 percentiles and "
        "z-scored with the foreground mean and std (Hounsfield units mean the same in every image); "
        "MR and other channels are z-scored per image (their scale differs between images), inside "
        f"the nonzero region when cropping to it keeps less than {NONZERO_CROP_THRESHOLD:g} of the voxels "
        "(median over the cases); RGB photographs are scaled from [0, 255] to [0, 1]"
    )
    return _value(
        channels,
        rule,
        median_fraction_kept_by_nonzero_crop=_r(median_ratio),
        foreground_intensity=fp["foreground_intensity"],
    )


# -- geometry ---------------------------------------------------------------------------------------


@dataclass
class _Geometry:
    axes: tuple[int, ...]  # image axes the network sees (2-D on 3-D data: the in-plane axes)
    spacing: list[float]
    median_shape: list[float]
    slice_axis: int | None


def _geometry(fp: Mapping[str, Any], dims: int, spacing: list[float]) -> _Geometry:
    data_dims = int(fp["dataset"]["spatial_dims"])
    shapes = np.array([c["shape"] for c in fp["cases"]], dtype=np.float64)
    spacings = np.array([c["spacing"] for c in fp["cases"]], dtype=np.float64)
    resampled = np.median(shapes * spacings / np.asarray(spacing), axis=0)
    if dims == data_dims:
        return _Geometry(tuple(range(dims)), list(spacing), [float(s) for s in resampled], None)
    # 2-D network on 3-D data: slice along the coarsest axis (ties: the last, axial in RAS)
    order = np.asarray(spacing)
    slice_axis = int(max(range(3), key=lambda i: (order[i], i)))
    axes = tuple(i for i in range(3) if i != slice_axis)
    return _Geometry(axes, [spacing[i] for i in axes], [float(resampled[i]) for i in axes], slice_axis)


def _initial_patch(spacing: Sequence[float], median_shape: Sequence[float]) -> list[int]:
    dims = len(spacing)
    inv = 1 / np.asarray(spacing, dtype=np.float64)
    patch = inv * (REFERENCE_PATCH_VOXELS[dims] / np.prod(inv)) ** (1 / dims)
    return [int(min(round(p), round(m))) for p, m in zip(patch, median_shape, strict=True)]


def _dataset_voxels(fp: Mapping[str, Any], geometry: _Geometry) -> float:
    """The dataset's voxels at the target spacing: the median image times the cases (nnU-Net's
    ``approximate_n_voxels_dataset``), which caps the batch."""
    median_voxels = float(np.prod(geometry.median_shape))
    if geometry.slice_axis is not None:
        shapes = np.array([c["shape"] for c in fp["cases"]], dtype=np.float64)
        median_voxels *= float(np.median(shapes[:, geometry.slice_axis]))
    return median_voxels * len(fp["cases"])


def _reduce_patch(
    patch: list[int], geometry: _Geometry, divisor: Sequence[int], min_coverage: float
) -> list[int] | None:
    """nnU-Net's reduction: shrink the axis whose patch is largest relative to the median shape.

    An axis is not shrunk below ``min_coverage`` of the median shape (nor below two feature-map
    edges); ``None`` when no axis can shrink.
    """
    ratios = [p / m for p, m in zip(patch, geometry.median_shape, strict=True)]
    for axis in np.argsort(ratios, kind="stable")[::-1]:
        smaller = patch[axis] - divisor[axis]
        floor = max(2 * FEATUREMAP_MIN_EDGE, min_coverage * geometry.median_shape[axis])
        if smaller >= floor:
            out = list(patch)
            out[axis] = smaller
            return out
    return None


# -- the search over networks and patches -------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    """One network at one patch, judged against the budget."""

    width: Width
    topology: Topology
    config: dict[str, Any]
    patch: list[int]
    batch_cap: int
    assessment: Assessment
    tried: tuple[dict[str, Any], ...] = field(default=())
    over_budget: bool = False

    @property
    def batch(self) -> int:
        return self.assessment.batch

    @property
    def step(self) -> Mapping[str, float]:
        return self.assessment.step

    @property
    def cost(self) -> dict[str, Any]:
        return self.assessment.cost

    def attempt(self) -> dict[str, Any]:
        """What the plan records of a candidate that did not fit."""
        return {
            "width": self.width.name,
            "patch_size": self.patch,
            "batch_size": self.batch,
            "gflop_per_step": _r(self.step["gflop"]),
            "parameters": int(self.step["parameters"]),
            **self.cost,
        }


def _train_cases(num_cases: int) -> int:
    """Cases in the training folds of the fixed split (sorted ids, index % 5)."""
    return sum(1 for index in range(num_cases) if index % NUM_FOLDS in TRAIN_FOLDS)


def _samples_per_epoch(fp: Mapping[str, Any], geometry: _Geometry) -> int:
    """Samples an epoch draws: each training case once, or 8 slices of it for a 2-D network on volumes."""
    return _train_cases(len(fp["cases"])) * (SLICES_PER_VOLUME if geometry.slice_axis is not None else 1)


def _candidate(
    fp: Mapping[str, Any],
    spec: NetworkSpec,
    budget: Budget,
    geometry: _Geometry,
    width: Width,
    patch: list[int],
    final: bool = False,
) -> _Candidate:
    """The network a patch allows (nnU-Net's topology, the registry's ``network_def``), judged
    (``final``: it is taken whatever the verdict)."""
    dims = len(geometry.axes)
    topology = get_pool_and_conv_props(geometry.spacing, patch)
    design = Design(
        spatial_dims=dims,
        in_channels=len(fp["dataset"]["channels"]),
        out_channels=len(fp["dataset"]["labels"]),
        strides=topology.strides,
        patch_size=topology.patch_size,
        base=width.base,
        blocks=width.blocks,
        max_features=MAX_FEATURES[dims],
        min_edge=FEATUREMAP_MIN_EDGE,
    )
    config = spec.network_def(design)
    stride = total_stride(config)
    padded = [int(math.ceil(p / s) * s) for p, s in zip(patch, stride, strict=True)]
    samples = _samples_per_epoch(fp, geometry)
    cap = budget.batch_cap(_dataset_voxels(fp, geometry), float(np.prod(padded)), samples)
    slicing = geometry.slice_axis is not None
    assessment = budget.assess(config, padded, cap, samples, slicing, final)
    return _Candidate(width, topology, config, padded, cap, assessment)


def _search(
    fp: Mapping[str, Any], spec: NetworkSpec, budget: Budget, geometry: _Geometry, whole_image: bool = False
) -> _Candidate:
    """The first candidate that fits: each rung of the budget's ladder at nnU-Net's patch, then the
    last rung at smaller patches (nnU-Net's reduction) down to the budget's smallest.

    ``whole_image``: a CPU plan for 2-D images keeps the whole (rescaled) image as its patch and never
    reduces it: a photograph is seen whole, and where it is too slow, a coarser scale
    (:mod:`medseg.plan.resolution`) rather than a crop makes it fit (a crop of half a Kvasir-SEG
    photograph at full resolution, what a CPU plan took before, lets an 8-minute training see each
    photograph a few times; whole photographs resized to 128-192 pixels, dozens of times).
    """
    min_coverage = 1.0 if whole_image and budget.target == "cpu" else budget.min_coverage
    tried: list[dict[str, Any]] = []
    ladder = budget.ladder_for(whole_image)
    for rung, width in enumerate(ladder):
        patch = _initial_patch(geometry.spacing, geometry.median_shape)
        while True:
            candidate = _candidate(fp, spec, budget, geometry, width, patch)
            if candidate.assessment.fits:
                return replace(candidate, tried=tuple(tried))
            tried.append(candidate.attempt())
            if rung < len(ladder) - 1:
                break  # a lighter network is tried before a smaller patch
            smaller = _reduce_patch(patch, geometry, candidate.topology.divisor, min_coverage)
            if smaller is None:
                budget.exhausted(spec.name)
                taken = _candidate(fp, spec, budget, geometry, width, patch, final=True)
                return replace(taken, tried=tuple(tried[:-1]), over_budget=True)
            patch = smaller
    raise AssertionError("a budget's ladder has at least one rung")


def _rescaled(geometry: _Geometry, scale: float, square: bool = False) -> _Geometry:
    """The geometry at a coarser scale: spacing divided by ``scale``, the median shape times it
    (``square``: photographs, resized to a square of the median image's geometric-mean side)."""
    shape = [m * scale for m in geometry.median_shape]
    if square:
        shape = [float(np.prod(shape)) ** (1 / len(shape))] * len(shape)
    return replace(geometry, spacing=[s / scale for s in geometry.spacing], median_shape=shape)


def _plan_resolution(
    fp: Mapping[str, Any], spec: NetworkSpec, budget: Budget, geometry: _Geometry, photographs: bool
) -> Resolution:
    """The search at the finest resolution the budget lets the training see enough of
    (:mod:`medseg.plan.resolution`)."""
    return choose_resolution(
        geometry,
        lambda g: _search(fp, spec, budget, g, whole_image=photographs),
        lambda g, scale: _rescaled(g, scale, square=photographs),
        budget,
        _samples_per_epoch(fp, geometry),
        photographs,
        lambda found: {"width": found.width.name, "over_budget": found.over_budget},
    )


def _coarser_spacing(entry: Mapping[str, Any], resolution: Resolution, geometry: _Geometry) -> dict[str, Any]:
    """The target spacing entry at the chosen scale (volumes only; the in-plane axes of slices)."""
    spacing = list(entry["value"])
    for axis in geometry.axes:
        spacing[axis] = _r(spacing[axis] / resolution.scale, 6)
    return _value(
        spacing,
        f"{entry['rule']}; then coarser by {_r(resolution.scale, 3)} along the network's axes, to see the "
        "images often enough within the budget (see resolution)",
        full_resolution=entry["value"],
        **entry["data"],
    )


# -- the rules of the data ---------------------------------------------------------------------------


def _loss(fp: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    fractions = {int(k): float(v) for k, v in fp["label_fraction"].items()}
    rare = {k: f for k, f in fractions.items() if k > 0 and f < RARE_CLASS_FRACTION}
    data = {"label_fraction": fp["label_fraction"], "rare_below": RARE_CLASS_FRACTION}
    if not rare:
        return _value(
            {"name": "dice_ce", "num_classes": num_classes, "batch": True, "class_weights": None},
            "Dice + cross-entropy with the Dice over the whole batch (nnU-Net's loss; batch Dice as in the "
            f"hippocampus recipe): no foreground class covers less than {RARE_CLASS_FRACTION:.1%} of the voxels",
            **data,
        )
    weights = [1.0] * num_classes
    for k, f in rare.items():
        weights[k] = _r(min(MAX_CLASS_WEIGHT, math.sqrt(RARE_CLASS_FRACTION / max(f, 1e-12))), 3)
    return _value(
        {"name": "dice_ce", "num_classes": num_classes, "batch": True, "class_weights": weights},
        f"Dice + cross-entropy; class(es) {sorted(rare)} cover less than {RARE_CLASS_FRACTION:.1%} of the voxels, "
        f"so their cross-entropy weight is sqrt({RARE_CLASS_FRACTION:g} / fraction), at most {MAX_CLASS_WEIGHT:g}",
        **data,
    )


def _mirror_axes(fp: Mapping[str, Any], geometry: _Geometry, rgb: bool) -> dict[str, Any]:
    axes = list(range(len(geometry.axes)))
    if rgb:
        return _value(
            axes,
            "RGB photographs have no anatomical handedness or up/down: mirror along every axis",
        )
    cases = fp["cases"]
    bare = all(c.get("bare_geometry", False) for c in cases)
    skew = np.array([c["foreground_skewness"] for c in cases], dtype=np.float64)
    shares = []
    for axis in geometry.axes:
        # only clearly leaning cases count: a shape symmetric along the axis leans either way by chance
        positive = float(np.mean(skew[:, axis] >= MIRROR_MIN_SKEWNESS)) if len(skew) else 0.0
        negative = float(np.mean(skew[:, axis] <= -MIRROR_MIN_SKEWNESS)) if len(skew) else 0.0
        shares.append(_r(min(positive, negative), 3))
    safe = [i for i, axis in enumerate(geometry.axes) if shares[i] >= MIRROR_MINORITY_SHARE]
    leaning = {str(axis): share for axis, share in zip(geometry.axes, shares, strict=True)}
    names = " ".join(fp["dataset"]["labels"].values()).lower()
    lateral = "left" in names or "right" in names
    if lateral:
        return _value(
            [],
            "none: a label name says left or right, and mirroring would swap the sides",
            minority_share_leaning_each_way=leaning,
        )
    orientation_note = (
        "the headers keep no scanner geometry (identity directions, origin near 0), so the orientation is "
        "unknown and no axis can be called left-right"
        if bare
        else "the orientation is known from the headers"
    )
    if not safe:
        orientation_note += (
            " (a recipe that mirrors anyway records that as an override in plans/overrides.json)"
        )
    rule = (
        f"{orientation_note}; an axis is mirrored only when the data show it is safe: at least "
        f"{MIRROR_MINORITY_SHARE:.0%} of the cases lean clearly each way along it (skewness of their foreground's "
        f"coordinates beyond +-{MIRROR_MIN_SKEWNESS:g}), i.e. the dataset already holds both mirror images of the "
        "anatomy"
    )
    return _value(safe, rule, minority_share_leaning_each_way=leaning, bare_geometry=bare)


def _suitability(
    fp: Mapping[str, Any], spacing_mm: Sequence[float], mirror: Sequence[int], rgb: bool
) -> dict[str, Any]:
    cases = fp["cases"]
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64)
    extents = np.array([c["shape"] for c in cases], dtype=np.float64) * spacings
    low_extent, high_extent = float(extents.min()), float(extents.max())
    modalities = sorted(
        {
            _MODALITY_CODES.get(name.strip().lower().split()[0], "")
            for name in fp["dataset"]["channels"].values()
            if name.strip()
        }
        - {""}
    )
    limits: dict[str, Any] = {
        "num_channels": len(fp["dataset"]["channels"]),
        "plausible_extent_mm": [
            2 ** math.floor(math.log2(0.75 * low_extent)),
            2 ** math.ceil(math.log2(2 * high_extent)),
        ],
        "plausible_spacing_mm": [_r(spacings.min() / 2), _r(spacings.max() * 2)],
        "tta_flip_axes": list(mirror),
    }
    if modalities and not rgb:
        limits["modality"] = modalities[0] if len(modalities) == 1 else modalities
    return _value(
        limits,
        "what medseg segment accepts (network_data_format.inputs.image): the channels' DICOM modality and "
        "count; extents from 3/4 of the smallest to twice the largest of the dataset's (rounded out to "
        "powers of two); spacings from half the finest to twice the coarsest; test-time flips along the "
        "mirrored axes",
        extent_mm=[_r(low_extent), _r(high_extent)],
        spacing_mm=[_r(spacings.min()), _r(spacings.max())],
        target_spacing_mm=list(spacing_mm),
    )


# -- one function per planned value --------------------------------------------------------------------


def _plan_target_spacing(fp: Mapping[str, Any], rgb: bool) -> dict[str, Any]:
    cases = fp["cases"]
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64)
    shapes = np.array([c["shape"] for c in cases], dtype=np.float64)
    spacing, rule, data = target_spacing(spacings, shapes)
    if rgb:
        rule = "photographs carry no physical spacing: used at their pixel grid (spacing 1)"
    return _value(spacing, rule, **data)


def _plan_slicing(geometry: _Geometry, dims: int) -> dict[str, Any]:
    data = {"median_shape_at_target_spacing": [_r(s) for s in geometry.median_shape]}
    if geometry.slice_axis is None:
        return _value(None, f"the network is {dims}-D like the images: no slicing", **data)
    return _value(
        {
            "slice_axis": geometry.slice_axis,
            "axes": list(geometry.axes),
            "slices_per_volume": SLICES_PER_VOLUME,
        },
        "a 2-D network on 3-D images sees slices across the coarsest axis (ties: the last, axial in RAS), "
        "8 random slices per volume and step as in the hippocampus_unet2d recipe",
        **data,
    )


def _width_note(found: _Candidate) -> str:
    """Which network width was chosen, and which wider ones did not fit."""
    lighter = [t["width"] for t in found.tried if t["width"] != found.width.name]
    note = (
        f"; the {', '.join(dict.fromkeys(lighter))} network did not fit the budget, so the {found.width.name} one "
        f"({found.width.note}) was chosen"
        if lighter
        else f"; {found.width.note}"
    )
    if found.over_budget:
        note += (
            "; even so it does not fit: the patch was reduced to half the median image shape and the "
            "training gets fewer epochs"
        )
    return note


def _plan_compute(found: _Candidate, budget: Budget) -> dict[str, Any]:
    return _value(
        {**budget.value(), **found.cost},
        budget.rule() + _width_note(found),
        **budget.data(),
        tried=list(found.tried),
    )


def _plan_patch_size(found: _Candidate, geometry: _Geometry) -> dict[str, Any]:
    reduced = any(t["width"] == found.width.name for t in found.tried)
    return _value(
        found.patch,
        "a 256^3 (2-D: 2048^2) voxel volume shaped by the target spacing, clipped to the median image "
        "shape, padded to a multiple of the network's total stride (nnU-Net v2)"
        + (
            "; reduced along the axis largest relative to the median shape until it fit the budget"
            if reduced
            else ""
        ),
        median_shape=[_r(s) for s in geometry.median_shape],
        spacing=geometry.spacing,
    )


def _plan_network(found: _Candidate, spec: NetworkSpec, dims: int) -> dict[str, Any]:
    topology = found.topology
    return _value(
        found.config,
        f"{spec.name} with {len(topology.strides) + 1} levels: an axis is halved while its feature map keeps >= "
        f"{2 * FEATUREMAP_MIN_EDGE} voxels and its spacing is within 2x of the finest (nnU-Net's "
        "get_pool_and_conv_props); widths double per level from the base, at most "
        f"{MAX_FEATURES[dims]}{_width_note(found)}" + (f"; {spec.description}" if spec.description else ""),
        pools_per_axis=list(topology.pools_per_axis),
        strides=[list(s) for s in topology.strides],
        parameters=int(found.step["parameters"]),
        gflop_per_step=_r(found.step["gflop"]),
    )


def _plan_batch_size(found: _Candidate, budget: Budget) -> dict[str, Any]:
    return _value(found.batch, budget.batch_rule(), **budget.batch_cap_data(found.batch_cap))


def _trained_cost(cost: Mapping[str, Any], precision: Mapping[str, Any] | None) -> dict[str, Any]:
    """A candidate's cost at the step it trains with: its bf16 step when the plan chose bf16."""
    if precision is not None and precision.get("value") == "bf16":
        return {**cost, "seconds_per_step": precision["seconds_per_step_bf16"]}
    return dict(cost)


def _plan_training(
    found: _Candidate,
    budget: Budget,
    spec: NetworkSpec,
    fp: Mapping[str, Any],
    geometry: _Geometry,
    images: bool = False,
) -> dict[str, Any]:
    learning_rate = IMAGE_LEARNING_RATE if images else LEARNING_RATE
    steps_per_epoch = math.ceil(_samples_per_epoch(fp, geometry) / found.batch)
    dims = len(geometry.axes)
    channels_last = budget.channels_last and spec.channels_last(dims)
    precision = _training_precision(found, budget, channels_last)
    epochs, epochs_rule = budget.epochs(_trained_cost(found.cost, precision), steps_per_epoch)
    precision_value = {"precision": precision["value"]} if precision is not None else {}
    precision_data = {"precision": {k: v for k, v in precision.items() if k != "value"}} if precision else {}
    precision_rule = (
        f"; precision: {precision['rule']}"
        + (" (the epochs fit the budget at the bf16 step)" if precision["value"] == "bf16" else "")
        if precision is not None
        else ""
    )
    return _value(
        {
            "test_fold": TEST_FOLD,
            "val_fold": VAL_FOLD,
            "train_folds": list(TRAIN_FOLDS),
            "max_epochs": epochs,
            "optimizer": "AdamW",
            "learning_rate": learning_rate,
            "weight_decay": WEIGHT_DECAY,
            "schedule": "cosine",
            "warmup_epochs": 0,
            "ema_decay": EMA_DECAY,
            "model_selection": "final EMA weights",
            "channels_last": channels_last,
            "track_meta_in_training": False,
            **precision_value,
        },
        f"{epochs_rule}; the hippocampus recipe's optimiser (AdamW {LEARNING_RATE:g} from the first step, cosine "
        f"decay, weight EMA up to {EMA_DECAY})"
        + (
            f", at {IMAGE_LEARNING_RATE:g} for a 2-D network on 2-D images (on Kvasir-SEG dev, 8 minutes, fold-1 "
            "Dice 0.615-0.618 at 1e-3 against 0.550-0.554 at 5e-3, same network and batch)"
            if images
            else ""
        )
        + "; test-fold rule: fold 0 of the fixed split is the test fold, the "
        "network trains on folds 2-4 on a fixed schedule, is monitored on fold 1 and keeps its final EMA weights, "
        "so no decision looks at fold 0 (the hand-made recipe chose its best epoch on fold 0, which biases its "
        "figure)" + precision_rule,
        train_cases=_train_cases(len(fp["cases"])),
        steps_per_epoch=steps_per_epoch,
        **precision_data,
    )


def _training_precision(found: _Candidate, budget: Budget, channels_last: bool) -> dict[str, Any] | None:
    """A measured CPU plan's training precision (:meth:`StepTimer.training_precision`: bf16 where this
    CPU has bf16 units and a bf16 step measured at least 10 % faster), or None for an unmeasured plan."""
    fp32 = found.cost.get("seconds_per_step_measured")
    if budget.timer is None or budget.target != "cpu" or fp32 is None:
        return None
    return budget.timer.training_precision(found.config, found.patch, found.batch, float(fp32), channels_last)


def _plan_augmentation(found: _Candidate, mirror: Mapping[str, Any], dims: int, rgb: bool) -> dict[str, Any]:
    anisotropic = max(found.patch) / min(found.patch) > ANISOTROPY_THRESHOLD
    rotate = math.pi if rgb else 0.26
    return _value(
        {
            "mirror_axes": mirror["value"],
            "affine_prob": 0.3,
            "rotate_range": [rotate] if (dims == 2 or anisotropic) else [rotate] * 3,
            "rotate_in_plane_only": bool(anisotropic and dims == 3),
            "scale_range": 0.1,
            "intensity_scale": 0.1,
            "intensity_shift": 0.1,
        },
        "mirroring: "
        + mirror["rule"]
        + "; random affine with p 0.3, rotations up to 15 degrees (photographs: "
        "any angle; anisotropic patches: in-plane only, as nnU-Net's dummy 2-D augmentation) and scaling 10%, "
        "intensity scale and shift 10% (the hippocampus recipe; nnU-Net uses p 0.2, scaling 0.7-1.4)",
        **mirror["data"],
    )


def _plan_inference(found: _Candidate, geometry: _Geometry) -> dict[str, Any]:
    return _value(
        {
            "roi_size": found.patch,
            "overlap": 0.5,
            "mode": "gaussian",
            "sw_batch_size": 4 if geometry.slice_axis is None else 64,
        },
        "sliding window of the training patch, half overlapping, gaussian-weighted (nnU-Net's step 0.5); "
        "4 windows per call, 64 slices per call for a 2-D network on volumes (MONAI's SliceInferer)",
    )


# -- the orchestrator -------------------------------------------------------------------------------------


def _planned_dims(dataset: Mapping[str, Any], dims: int | None) -> int:
    data_dims = int(dataset["spatial_dims"])
    dims = data_dims if dims is None else int(dims)
    if dims not in (2, 3) or dims > data_dims:
        raise ConfigError(
            f"--dims {dims} does not fit a {data_dims}-D dataset; choose --dims {data_dims} or 2"
        )
    return dims


def _is_rgb(dataset: Mapping[str, Any]) -> bool:
    names = tuple(v.strip().lower() for v in dataset["channels"].values())
    return int(dataset["spatial_dims"]) == 2 and names in (("r", "g", "b"), ("red", "green", "blue"))


def _inputs(
    fp: Mapping[str, Any],
    spec: NetworkSpec,
    dims: int,
    budget: Budget,
    name: str | None,
    dataset_folder: str | None,
    concepts: Mapping[str, Any] | None,
    input_overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """What the plan was made from, with the input overrides (label names, codes, metadata) applied."""
    dataset = fp["dataset"]
    labels = dict(dataset["labels"])
    if "labels" in input_overrides:
        labels = override_labels(labels, input_overrides["labels"])
    if "concepts" in input_overrides:
        concepts = input_overrides["concepts"]
    default_name = "".join(c if c.isalnum() else "_" for c in dataset["name"].lower()).strip("_")
    return {
        "name": name or f"{default_name.split('__')[0]}_{spec.name}{dims}d",
        "network": spec.name,
        "dims": dims,
        "target": budget.target,
        "dataset_folder": dataset_folder,
        "dataset": {k: dataset[k] for k in _DATASET_FIELDS} | {"labels": labels},
        "concepts": check_concepts(concepts if concepts is not None else dataset.get("concepts"), labels),
        "metadata": metadata_text(input_overrides.get("metadata", {})),
        "versions": installed_versions(),
    }


def make_plan(
    fingerprint: Mapping[str, Any],
    network: str | None = None,
    dims: int | None = None,
    target: str = "cpu",
    name: str | None = None,
    max_minutes: float = DEFAULT_CPU_MINUTES,
    gpu_memory_gb: float = REFERENCE_GPU_MEMORY_GB,
    cpu_cores: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    dataset_folder: str | None = None,
    concepts: Mapping[str, Any] | None = None,
    timer: StepTimer | None = None,
) -> dict[str, Any]:
    """Plan a bundle for a dataset (``plans/plan.json``).

    Args:
        fingerprint: from :func:`medseg.plan.fingerprint.extract_fingerprint`.
        network: one of :data:`NETWORK_NAMES` (the registry's networks); default ``unet`` for a CPU,
            ``resencunet`` (nnU-Net's ResEnc presets) for a GPU.
        dims: 3 or 2 (default: the dataset's); 2 on a 3-D dataset plans a slice network.
        target: one of :data:`TARGETS`: ``"cpu"`` (plan for a wall-clock budget) or ``"gpu"`` (for memory).
        name: the bundle's name (default: derived from the dataset's name and the network).
        max_minutes: the CPU training budget (wall clock, whole training).
        gpu_memory_gb: the GPU memory budget (nnU-Net's reference: 8); it also picks the ResEnc preset
            (below 16 GB M, below 32 GB L, else XL).
        cpu_cores: cores the CPU training will use (default: those usable here).
        overrides: ``{value name, or "value.field": replacement}`` replacing planned values; the
            rule-based value and rule stay in the entry's ``data.planned``.
        dataset_folder: the dataset's folder name, recorded for the bundle's ``dataset_dir``.
        concepts: DICOM SEG codes per label value, in the format of a bundle's
            ``network_data_format.outputs.pred.segment_codes`` (default: the ``concepts`` block of
            dataset.json; labels without codes are looked up by name when segmenting).
        timer: a CPU plan measures its candidates' step times with it (``medseg plan --measure``;
            :class:`~medseg.plan.cost.StepTimer`) instead of trusting the FLOP model alone.

    Returns:
        ``{"plan_version", "medseg_version", "inputs", "values": {name: {"value", "rule", "data"}}}``.

    Raises:
        ConfigError: an unknown network or target, 3-D on a 2-D dataset, or no configuration fits.
    """
    from medseg import __version__

    budget = make_budget(target, max_minutes, gpu_memory_gb, cpu_cores, timer, network)
    spec = network_spec(str(budget.network))
    dataset = fingerprint["dataset"]
    dims = _planned_dims(dataset, dims)
    rgb = _is_rgb(dataset)

    values: dict[str, dict[str, Any]] = {"target_spacing": _plan_target_spacing(fingerprint, rgb)}
    geometry = _geometry(fingerprint, dims, values["target_spacing"]["value"])
    values["slicing"] = _plan_slicing(geometry, dims)
    values["normalization"] = _normalization(fingerprint, rgb)
    photographs = int(dataset["spatial_dims"]) == 2
    resolution = _plan_resolution(fingerprint, spec, budget, geometry, photographs)
    found, geometry = resolution.found, resolution.geometry
    values["resolution"] = resolution.value
    if resolution.scale != 1.0 and not photographs:
        values["target_spacing"] = _coarser_spacing(values["target_spacing"], resolution, geometry)
    values["compute"] = _plan_compute(found, budget)
    values["patch_size"] = _plan_patch_size(found, geometry)
    values["network"] = _plan_network(found, spec, dims)
    values["batch_size"] = _plan_batch_size(found, budget)
    values["training"] = _plan_training(found, budget, spec, fingerprint, geometry, images=photographs)
    values["loss"] = _loss(fingerprint, len(dataset["labels"]))
    mirror = _mirror_axes(fingerprint, geometry, rgb)
    values["augmentation"] = _plan_augmentation(found, mirror, dims, rgb)
    values["inference"] = _plan_inference(found, geometry)
    values["suitability"] = _suitability(fingerprint, values["target_spacing"]["value"], mirror["value"], rgb)

    input_overrides, value_overrides = split_overrides(overrides or {})
    apply_overrides(values, value_overrides, (overrides or {}).get(WHY_KEY))
    inputs = _inputs(fingerprint, spec, dims, budget, name, dataset_folder, concepts, input_overrides)
    plan = {"plan_version": PLAN_VERSION, "medseg_version": __version__, "inputs": inputs, "values": values}
    if budget.timer is not None and budget.target == "cpu":
        _add_data_time(plan, budget, geometry, "training.max_epochs" in value_overrides)
    return plan


def _cached_shape(values: Mapping[str, Any], geometry: _Geometry) -> list[int]:
    """The spatial shape of a cached training image: a photograph's target size, else the median image
    at the planned spacing."""
    target_size = values.get("resolution", {}).get("value", {}).get("target_size")
    return list(target_size) if target_size else [max(1, round(s)) for s in geometry.median_shape]


def _add_data_time(
    plan: dict[str, Any], budget: Budget, geometry: _Geometry, epochs_overridden: bool
) -> None:
    """Add the data pipeline's measured time to a measured CPU plan's step, and fit the epochs to both.

    A CPU training runs its random transforms (crop, affine, mirroring, intensity) in the training
    process, between its network steps (on the hippocampus at one thread, 7 ms beside a 78 ms network
    step, where the training's steps took 92 ms). They are timed here as the bundle will run them
    (:meth:`medseg.plan.cost.StepTimer.transform_seconds` on its rendered ``train#random_transforms``,
    cached like the steps), on an image of the cached shape, times the images a step draws.
    """
    from medseg.render.template import BundleTemplate

    values = plan["values"]
    template = BundleTemplate(plan)
    images = math.ceil(int(values["batch_size"]["value"]) / template.slices_per_volume)
    assert budget.timer is not None
    per_image = budget.timer.transform_seconds(
        template.train(), "train#random_transforms", _cached_shape(values, geometry), len(template.channels)
    )
    data_s = _r(per_image * images)
    compute = values["compute"]
    compute["value"]["seconds_per_step_data"] = data_s
    compute["rule"] += (
        "; plus the data pipeline's time per step, which a CPU training spends in its own process: the "
        f"bundle's random transforms timed on an image of the cached shape (mean of {MEASURED_ITEMS}), times "
        f"the images a step draws ({images})"
    )
    if epochs_overridden:
        return
    training = values["training"]
    record = training["data"].get("precision")
    cost = _trained_cost(
        compute["value"], {**record, "value": training["value"]["precision"]} if record else None
    )
    steps_per_epoch = int(compute["value"]["steps_per_epoch"])
    _, network_only = budget.epochs(cost, steps_per_epoch)
    epochs, rule = budget.epochs(
        {**cost, "seconds_per_step": cost["seconds_per_step"] + data_s}, steps_per_epoch
    )
    training["value"]["max_epochs"] = epochs
    training["rule"] = training["rule"].replace(
        network_only, f"{rule} (at the network's step plus the data pipeline's)", 1
    )


def _memory_line(plan: Plan) -> str:
    """A GPU plan's memory estimate against its budget, in one line ("" for other plans)."""
    compute = plan.values.get("compute", {})
    if "memory_budget_gib" not in compute:
        return ""
    preset = plan.data("compute").get("preset")
    batch = plan.data("batch_size").get("planned", {}).get("value", plan["batch_size"])  # before overrides
    line = (
        f"GPU memory: {compute.get('memory_gib_at_batch', compute['memory_gib'])} GiB estimated for a training "
        f"step at the planned batch {batch} ({compute['memory_gib']} GiB at batch {MIN_BATCH_SIZE}), "
        f"budget {compute['memory_budget_gib']} GiB"
    )
    if preset:
        line += f"; nnU-Net ResEnc preset {preset['name']} ({preset['nnunet_planner']}, {preset['target_gb']:g} GB)"
    return line


def explain(plan: Plan | Mapping[str, Any]) -> str:
    """Each planned value with its rule and the data behind it, as text for ``--explain``."""
    plan = Plan.of(plan)
    inputs = plan.inputs
    lines = [f"plan for {inputs['name']} ({inputs['network']}, {inputs['dims']}-D, {inputs['target']})"]
    memory = _memory_line(plan)
    if memory:
        lines.append(memory)
    for key, value in plan.values.items():
        lines.append(f"{key}: {json.dumps(value)}")
        lines.append(f"    rule: {plan.rule(key)}")
        if plan.data(key):
            lines.append(f"    data: {json.dumps(plan.data(key))}")
    return "\n".join(lines)
