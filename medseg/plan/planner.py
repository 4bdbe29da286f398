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

The compute budget decides how large a network and patch fit:

* ``gpu``: memory. nnU-Net's reference is an 8 GB GPU; medseg estimates a training step's memory
  from the network itself (the tensors autograd saves for the backward pass, counted on PyTorch's
  ``meta`` device without computing anything, plus weights, gradients and two AdamW moments, plus
  1 GiB for the CUDA context and workspaces) and shrinks the patch until a batch of 2 fits.
* ``cpu``: time. A CPU training must converge within a wall-clock budget (default 15 minutes), so
  a training step may take ``budget / (MIN_EPOCHS x steps per epoch)``; a step's time is estimated
  from the network's floating-point operations (counted on the ``meta`` device) at a throughput
  calibrated on the measured hippocampus recipe. When the nnU-Net-width network does not fit,
  lighter ones are tried (the plan says so), then a smaller patch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.render.records import installed_versions

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
NETWORK_NAMES = ("unet", "deeplabv3plus", "fcn", "segnet", "pspnet")
TARGETS = ("cpu", "gpu")

# nnU-Net v2's constants (default_experiment_planner.py).
ANISOTROPY_THRESHOLD = 3.0
FEATUREMAP_MIN_EDGE = 4
REFERENCE_PATCH_VOXELS = {3: 256**3, 2: 2048**2}
MAX_DATASET_FRACTION_PER_BATCH = 0.05
MIN_BATCH_SIZE = 2
NONZERO_CROP_THRESHOLD = 0.75
REFERENCE_GPU_MEMORY_GB = 8.0
GPU_RESERVED_BYTES = 1 << 30
GPU_BASE_FEATURES = 32
MAX_FEATURES = {3: 320, 2: 512}

# CPU cost model, calibrated on the measured hippocampus_unet3d recipe: its step (16-128 channels,
# one residual unit, 40 x 56 x 40, batch 2: 4.07 GFLOP forward + backward) takes about 50 ms on two
# cores (5.7 s per epoch of 104 steps with validation), i.e. about 100 GFLOP/s plus 10 ms of
# data augmentation, optimizer and EMA per step. Throughput is assumed to scale with the cores.
REFERENCE_CPU_GFLOPS = 100.0
REFERENCE_CPU_CORES = 2
CPU_STEP_OVERHEAD_S = 0.010
DEFAULT_CPU_MINUTES = 15.0
# The recipe's validation Dice was 0.857 after 5 epochs, 0.88 after 25 and peaked at 60: a CPU plan
# must afford 60 epochs within the budget; 10 % of the budget goes to caching and validation.
MIN_EPOCHS = 60
# A 2-D network on volumes (hippocampus_unet2d's recipe): 8 random slices of each of 4 volumes per step.
SLICES_PER_VOLUME = 8
SLICE_BATCH = 32
# A CPU patch keeps at least half the median image shape along each axis.
CPU_MIN_COVERAGE = 0.5
CPU_BUDGET_TRAINING_SHARE = 0.9
# nnU-Net trains 1000 epochs of 250 steps; a GPU plan keeps that number of steps.
GPU_TRAINING_STEPS = 250_000
# Cosine-decayed AdamW with a weight EMA: the recipe that reached fold-0 Dice 0.885 in 15 minutes.
LEARNING_RATE = 5e-3
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


def _value(value: Any, rule: str, **data: Any) -> dict[str, Any]:
    """One planned value with the rule that produced it and the data behind it."""
    return {"value": value, "rule": rule, "data": data}


def _r(x: float, digits: int = 4) -> float:
    return float(f"{float(x):.{digits}g}")


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


# -- networks and their cost ----------------------------------------------------------------------


@dataclass(frozen=True)
class Width:
    """One rung of the network ladder: base width and blocks per level."""

    name: str
    base: int
    blocks: int
    note: str


def _ladder(target: str) -> list[Width]:
    gpu = Width("nnU-Net width", GPU_BASE_FEATURES, 2, "nnU-Net's 32 base features, two blocks per level")
    if target == "gpu":
        return [gpu]
    return [
        gpu,
        Width(
            "light",
            16,
            1,
            "16 base features, one residual unit per level: the measured CPU recipe of hippocampus_unet3d "
            "(fold-0 Dice 0.885 in 15 minutes on 2 cores; a 4.7 M-parameter network did no better)",
        ),
        Width("lighter", 8, 1, "8 base features, one residual unit per level"),
    ]


def network_config(
    name: str, dims: int, in_channels: int, out_channels: int, topology: Topology, width: Width
) -> dict[str, Any]:
    """The network's ``network_def`` (``_target_`` and constructor arguments) for a planned topology.

    Args:
        name: one of :data:`NETWORK_NAMES`.
        dims: spatial dimensions.
        in_channels: image channels.
        out_channels: classes, background included.
        topology: strides per level (U-Net, SegNet: their depth follows it).
        width: base width and blocks per level.
    """
    levels = len(topology.strides) + 1
    cap = MAX_FEATURES[dims]
    widths = [min(width.base * 2**i, cap) for i in range(levels)]
    common = {"spatial_dims": dims, "in_channels": in_channels, "out_channels": out_channels}
    if name == "unet":
        strides = [list(s) if len(set(s)) > 1 else s[0] for s in topology.strides]
        return {
            "_target_": "medseg.networks.UNet",
            **common,
            "channels": widths,
            "strides": strides,
            "num_res_units": width.blocks,
            "norm": "instance",
        }
    if name == "segnet":
        return {
            "_target_": "medseg.networks.SegNet",
            **common,
            "channels": widths[: max(1, levels - 1)],
            "convs_per_stage": width.blocks,
        }
    encoder = [width.base, width.base] + [min(width.base * 2**i, cap) for i in range(1, 4)]
    if name == "fcn":
        return {
            "_target_": "medseg.networks.FCN",
            **common,
            "channels": encoder,
            "convs_per_stage": width.blocks,
        }
    # DeepLabV3+ and PSPNet: ResNet encoder with a dilated tail; output stride 16 needs >= 4 voxels
    # at 1/16 of the patch along every axis, else 8.
    output_stride = 16 if min(topology.patch_size) >= 16 * FEATUREMAP_MIN_EDGE else 8
    blocks = [1, width.blocks, width.blocks, 1]
    target = "medseg.networks.DeepLabV3Plus" if name == "deeplabv3plus" else "medseg.networks.PSPNet"
    config = {
        "_target_": target,
        **common,
        "channels": encoder,
        "num_blocks": blocks,
        "output_stride": output_stride,
        "decoder_channels": 4 * width.base,  # 128 at nnU-Net's width, as hippocampus_deeplab3d
    }
    if name == "deeplabv3plus":
        config["low_level_stride"] = 2 if min(topology.patch_size) < 64 else 4
        config["aspp_channels"] = 4 * width.base
    return config


def total_stride(config: Mapping[str, Any], topology: Topology) -> tuple[int, ...]:
    """The multiple every patch axis must be of for the network (it pads other sizes internally)."""
    target = config["_target_"].rsplit(".", 1)[-1]
    dims = len(topology.patch_size)
    if target == "UNet":
        return topology.divisor
    if target == "SegNet":
        return (2 ** len(config["channels"]),) * dims
    if target == "FCN":
        return (32,) * dims
    return (int(config["output_stride"]),) * dims


def _build(config: Mapping[str, Any]):
    import medseg.networks as networks

    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    return getattr(networks, config["_target_"].rsplit(".", 1)[-1])(**kwargs)


def estimate_step(config: Mapping[str, Any], patch_size: Sequence[int], batch_size: int) -> dict[str, float]:
    """Cost of one training step, counted on PyTorch's ``meta`` device (nothing is computed).

    Args:
        config: a ``network_def`` from :func:`network_config`.
        patch_size: the training patch.
        batch_size: samples per step.

    Returns:
        ``{"gflop": forward + backward floating-point operations (1e9), "saved_mib": tensors autograd
        keeps for the backward pass (MiB, float32), "parameters": count}``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.device("meta"):
        network = _build(config)
        x = torch.empty((batch_size, config["in_channels"], *patch_size))
    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        network(x).sum().backward()
    return {
        "gflop": counter.get_total_flops() / 1e9,
        "saved_mib": saved[0] / 2**20,
        "parameters": float(sum(p.numel() for p in network.parameters())),
    }


def _cpu_seconds(step: Mapping[str, float], gflops: float) -> float:
    return step["gflop"] / gflops + CPU_STEP_OVERHEAD_S


def _gpu_bytes(step: Mapping[str, float], batch_size: int, per_sample: bool = False) -> float:
    activations = step["saved_mib"] * 2**20
    if per_sample:
        return activations / batch_size
    return activations + 16 * step["parameters"] + GPU_RESERVED_BYTES


# -- the search -----------------------------------------------------------------------------------


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


def _batch_cap(fp: Mapping[str, Any], geometry: _Geometry, patch: Sequence[int], dims: int) -> int:
    median_voxels = float(np.prod(geometry.median_shape))
    if geometry.slice_axis is not None:
        shapes = np.array([c["shape"] for c in fp["cases"]], dtype=np.float64)
        median_voxels *= float(np.median(shapes[:, geometry.slice_axis]))
    dataset_voxels = median_voxels * len(fp["cases"])
    return max(
        MIN_BATCH_SIZE, int(round(dataset_voxels * MAX_DATASET_FRACTION_PER_BATCH / float(np.prod(patch))))
    )


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


def _search(
    fp: Mapping[str, Any],
    network: str,
    dims: int,
    target: str,
    geometry: _Geometry,
    budget: Mapping[str, float],
) -> dict[str, Any]:
    in_channels = len(fp["dataset"]["channels"])
    out_channels = len(fp["dataset"]["labels"])
    n_train = _train_cases(len(fp["cases"]))
    tried: list[dict[str, Any]] = []
    ladder = _ladder(target)
    for rung_index, width in enumerate(ladder):
        last_rung = rung_index == len(ladder) - 1
        patch = _initial_patch(geometry.spacing, geometry.median_shape)
        while True:
            topo = get_pool_and_conv_props(geometry.spacing, patch)
            config = network_config(network, dims, in_channels, out_channels, topo, width)
            stride = total_stride(config, topo)
            padded = [int(math.ceil(p / s) * s) for p, s in zip(patch, stride, strict=True)]
            cap = _batch_cap(fp, geometry, padded, dims)
            if target == "gpu":
                step = estimate_step(config, padded, MIN_BATCH_SIZE)
                need = _gpu_bytes(step, MIN_BATCH_SIZE)
                fits = need <= budget["bytes"]
                per_sample = _gpu_bytes(step, MIN_BATCH_SIZE, per_sample=True)
                fixed = need - MIN_BATCH_SIZE * per_sample
                batch = int(min(cap, max(MIN_BATCH_SIZE, (budget["bytes"] - fixed) // per_sample)))
                cost = {"memory_gib": _r(need / 2**30), "memory_budget_gib": _r(budget["bytes"] / 2**30)}
            else:
                batch = min(cap, SLICE_BATCH) if geometry.slice_axis is not None else MIN_BATCH_SIZE
                step = estimate_step(config, padded, batch)
                seconds = _cpu_seconds(step, budget["gflops"])
                steps_per_epoch = math.ceil(
                    n_train * (SLICES_PER_VOLUME if geometry.slice_axis is not None else 1) / batch
                )
                limit = budget["seconds"] * CPU_BUDGET_TRAINING_SHARE / (MIN_EPOCHS * steps_per_epoch)
                fits = seconds <= limit
                cost = {
                    "seconds_per_step": _r(seconds),
                    "seconds_per_step_allowed": _r(limit),
                    "steps_per_epoch": steps_per_epoch,
                }
            attempt = {
                "width": width.name,
                "patch_size": padded,
                "batch_size": batch,
                "gflop_per_step": _r(step["gflop"]),
                "parameters": int(step["parameters"]),
                **cost,
            }
            if fits:
                return {
                    "width": width,
                    "topology": topo,
                    "config": config,
                    "patch": padded,
                    "batch": batch,
                    "batch_cap": cap,
                    "step": step,
                    "cost": cost,
                    "tried": tried,
                }
            tried.append(attempt)
            if not last_rung:
                break  # on CPU a lighter network is tried before a smaller patch
            # a GPU patch may shrink to the smallest the network takes; a CPU one keeps half the
            # median shape (smaller patches lose the context the network needs) and trains fewer epochs
            smaller = _reduce_patch(
                patch, geometry, topo.divisor, 0.0 if target == "gpu" else CPU_MIN_COVERAGE
            )
            if smaller is None:
                if target == "gpu":
                    raise ConfigError(
                        f"no {network} patch fits {budget['bytes'] / 2**30:g} GiB of GPU memory even at the "
                        "smallest size; choose a lighter --network or plan for a larger GPU"
                    )
                return {
                    "width": width,
                    "topology": topo,
                    "config": config,
                    "patch": padded,
                    "batch": batch,
                    "batch_cap": cap,
                    "step": step,
                    "cost": cost,
                    "tried": tried[:-1],
                    "over_budget": True,
                }
            patch = smaller


# -- the other rules --------------------------------------------------------------------------------


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


# Overrides of what the bundle says rather than how it trains: label names, SEG codes and the
# metadata's descriptive text (a shipped bundle keeps the names and codes its users rely on).
INPUT_OVERRIDES = ("labels", "concepts", "metadata")
# ``{"why": {key: reason}}`` in overrides.json: why a deliberate choice differs from the rule (the
# reason joins the value's rule, so --explain and the bundle's README say it).
WHY_KEY = "why"
METADATA_TEXT_FIELDS = (
    "name",
    "task",
    "description",
    "data_source",
    "image_classes",
    "label_classes",
    "pred_classes",
    "references",
)


def _split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the input overrides (:data:`INPUT_OVERRIDES`) from those of planned values."""
    inputs = {k: v for k, v in overrides.items() if k in INPUT_OVERRIDES}
    values = {k: v for k, v in overrides.items() if k not in INPUT_OVERRIDES and k != WHY_KEY}
    return inputs, values


def _override_labels(labels: Mapping[str, str], names: Any) -> dict[str, str]:
    """Label names from an override: the same label values as dataset.json, other names."""
    if not isinstance(names, Mapping) or {str(k) for k in names} != set(labels):
        raise ConfigError(
            f"override 'labels' must name every label value of dataset.json ({', '.join(labels)}) and no other"
        )
    return {str(k): str(names[str(k)] if str(k) in names else names[k]) for k in labels}


def _metadata_text(fields: Any) -> dict[str, Any]:
    """Descriptive metadata.json fields from an override (see :data:`METADATA_TEXT_FIELDS`)."""
    if not isinstance(fields, Mapping) or not set(fields) <= set(METADATA_TEXT_FIELDS):
        raise ConfigError(
            f"override 'metadata' may set only {', '.join(METADATA_TEXT_FIELDS)} of metadata.json"
        )
    return dict(fields)


def apply_overrides(
    values: dict[str, dict[str, Any]], overrides: Mapping[str, Any], why: Mapping[str, str] | None = None
) -> None:
    """Replace planned values by recorded overrides, keeping what the rules planned in ``data``.

    A key names a planned value (``"batch_size"``) or a field inside one (``"augmentation.mirror_axes"``);
    each overridden value's rule says so, and its ``data.planned`` keeps the rule-based value and rule.

    Args:
        values: the planned values, replaced in place.
        overrides: ``{key: replacement}``.
        why: ``{key: reason}`` for some of the keys; the reason becomes part of the value's rule.
    """
    import copy

    why = dict(why or {})
    unknown = sorted(set(why) - set(overrides) - set(INPUT_OVERRIDES))  # input overrides: reasons on file
    if unknown:
        raise ConfigError(f"overrides 'why' explains {unknown[0]!r}, which is not overridden; remove it")
    for key, replacement in overrides.items():
        name, _, field = key.partition(".")
        if name not in values:
            raise ConfigError(
                f"override {key!r} names no planned value; choose one of {', '.join(values)} "
                f"(or {', '.join(INPUT_OVERRIDES)})"
            )
        entry = values[name]
        planned = entry["data"].get("planned") or {
            "value": copy.deepcopy(entry["value"]),
            "rule": entry["rule"],
        }
        value = copy.deepcopy(entry["value"])
        if field:
            target = value
            *path, last = field.split(".")
            for part in path:
                target = target[part] if isinstance(target, dict) and part in target else None
                if target is None:
                    break
            if not isinstance(target, dict) or last not in target:
                raise ConfigError(f"override {key!r}: {name} has no field {field!r}")
            target[last] = replacement
        else:
            value = replacement
        overridden = sorted(set(entry["data"].get("overridden", [])) | {key})
        reasons = dict(entry["data"].get("why", {}))
        if key in why:
            reasons[key] = str(why[key])
        because = "".join(f" ({k}: {reasons[k]})" for k in overridden if k in reasons)
        values[name] = _value(
            value,
            f"override recorded in the bundle's plans/overrides.json ({', '.join(overridden)}): a deliberate "
            f"choice that differs from the rule{because}; the rule: {planned['rule']}",
            planned=planned,
            overridden=overridden,
            **({"why": reasons} if reasons else {}),
        )


def _concepts(concepts: Mapping[str, Any] | None, labels: Mapping[str, str]) -> dict[str, Any] | None:
    """Check SEG codes given per label value (``{"1": {"category": [...], "type": [...]}}``)."""
    if not concepts:
        return None
    if not isinstance(concepts, Mapping):
        raise ConfigError("concepts must be an object of {label value: {category, type, modifiers, color}}")
    foreground = {k for k in labels if k != "0"}
    checked = {}
    for key, code in concepts.items():
        if str(key) not in foreground:
            raise ConfigError(
                f"concepts name label {key!r}, which is not a foreground label ({', '.join(sorted(foreground))})"
            )
        if not isinstance(code, Mapping) or "type" not in code:
            raise ConfigError(f"concepts of label {key} need at least a 'type' code [value, scheme, meaning]")
        checked[str(key)] = dict(code)
    return dict(sorted(checked.items(), key=lambda kv: int(kv[0])))


def _train_cases(num_cases: int) -> int:
    """Cases in the training folds of the fixed split (sorted ids, index % 5)."""
    return sum(1 for index in range(num_cases) if index % NUM_FOLDS in TRAIN_FOLDS)


def _cpu_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def make_plan(
    fingerprint: Mapping[str, Any],
    network: str = "unet",
    dims: int | None = None,
    target: str = "cpu",
    name: str | None = None,
    max_minutes: float = DEFAULT_CPU_MINUTES,
    gpu_memory_gb: float = REFERENCE_GPU_MEMORY_GB,
    cpu_cores: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    dataset_folder: str | None = None,
    concepts: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Plan a bundle for a dataset (``plans/plan.json``).

    Args:
        fingerprint: from :func:`medseg.plan.fingerprint.extract_fingerprint`.
        network: one of :data:`NETWORK_NAMES`.
        dims: 3 or 2 (default: the dataset's); 2 on a 3-D dataset plans a slice network.
        target: ``"cpu"`` (plan for a wall-clock budget) or ``"gpu"`` (plan for memory).
        name: the bundle's name (default: derived from the dataset's name and the network).
        max_minutes: the CPU training budget (wall clock, whole training).
        gpu_memory_gb: the GPU memory budget (nnU-Net's reference: 8).
        cpu_cores: cores the CPU training will use (default: those usable here).
        overrides: ``{value name, or "value.field": replacement}`` replacing planned values; the
            rule-based value and rule stay in the entry's ``data.planned``.
        dataset_folder: the dataset's folder name, recorded for the bundle's ``dataset_dir``.
        concepts: DICOM SEG codes per label value, in the format of a bundle's
            ``network_data_format.outputs.pred.segment_codes`` (default: the ``concepts`` block of
            dataset.json; labels without codes are looked up by name when segmenting).

    Returns:
        ``{"plan_version", "inputs", "values": {name: {"value", "rule", "data"}}}``.

    Raises:
        ConfigError: an unknown network or target, 3-D on a 2-D dataset, or no configuration fits.
    """
    network = network.lower().replace("-", "").replace("_", "")
    if network not in NETWORK_NAMES:
        raise ConfigError(f"unknown network {network!r}; choose one of {', '.join(NETWORK_NAMES)}")
    if target not in TARGETS:
        raise ConfigError(f"unknown target {target!r}; choose cpu or gpu")
    dataset = fingerprint["dataset"]
    data_dims = int(dataset["spatial_dims"])
    dims = data_dims if dims is None else int(dims)
    if dims not in (2, 3) or dims > data_dims:
        raise ConfigError(
            f"--dims {dims} does not fit a {data_dims}-D dataset; choose --dims {data_dims} or 2"
        )
    if max_minutes <= 0 or gpu_memory_gb <= 0:
        raise ConfigError("the compute budget must be positive")
    channel_names = [v.strip().lower() for v in dataset["channels"].values()]
    rgb = data_dims == 2 and tuple(channel_names) in (("r", "g", "b"), ("red", "green", "blue"))
    cases = fingerprint["cases"]
    spacings = np.array([c["spacing"] for c in cases], dtype=np.float64)
    shapes = np.array([c["shape"] for c in cases], dtype=np.float64)

    values: dict[str, dict[str, Any]] = {}
    spacing, rule, data = target_spacing(spacings, shapes)
    if rgb:
        rule = "photographs carry no physical spacing: used at their pixel grid (spacing 1)"
    values["target_spacing"] = _value(spacing, rule, **data)
    geometry = _geometry(fingerprint, dims, spacing)
    values["slicing"] = _value(
        {
            "slice_axis": geometry.slice_axis,
            "axes": list(geometry.axes),
            "slices_per_volume": SLICES_PER_VOLUME,
        }
        if geometry.slice_axis is not None
        else None,
        "a 2-D network on 3-D images sees slices across the coarsest axis (ties: the last, axial in RAS), "
        "8 random slices per volume and step as in the hippocampus_unet2d recipe"
        if geometry.slice_axis is not None
        else f"the network is {dims}-D like the images: no slicing",
        median_shape_at_target_spacing=[_r(s) for s in geometry.median_shape],
    )
    values["normalization"] = _normalization(fingerprint, rgb)

    cores = _cpu_cores() if cpu_cores is None else int(cpu_cores)
    gflops = REFERENCE_CPU_GFLOPS * cores / REFERENCE_CPU_CORES
    budget = {"seconds": 60.0 * max_minutes, "gflops": gflops, "bytes": gpu_memory_gb * 2**30}
    found = _search(fingerprint, network, dims, target, geometry, budget)
    width: Width = found["width"]
    topo: Topology = found["topology"]
    lighter = [t["width"] for t in found["tried"] if t["width"] != width.name]
    lighter_note = (
        f"; the {', '.join(dict.fromkeys(lighter))} network did not fit the budget, so the {width.name} one "
        f"({width.note}) was chosen"
        if lighter
        else f"; {width.note}"
    )
    if target == "gpu":
        budget_rule = (
            f"GPU memory: a training step of batch {MIN_BATCH_SIZE} must fit {gpu_memory_gb:g} GB (nnU-Net's 8 GB "
            "reference); estimate = tensors autograd saves (counted on the meta device, float32) + 16 bytes per "
            "parameter (weights, gradients, AdamW moments) + 1 GiB CUDA context and workspaces"
        )
    else:
        budget_rule = (
            f"CPU time: {MIN_EPOCHS} epochs (where the hippocampus recipe's validation Dice peaked) must fit "
            f"{CPU_BUDGET_TRAINING_SHARE:.0%} of {max_minutes:g} minutes; a step takes FLOPs / {gflops:g} GFLOP/s "
            f"+ {CPU_STEP_OVERHEAD_S * 1000:g} ms ({REFERENCE_CPU_GFLOPS:g} GFLOP/s on {REFERENCE_CPU_CORES} cores, "
            "calibrated on the measured hippocampus_unet3d step, scaled by the cores)"
        )
    if found.get("over_budget"):
        lighter_note += (
            "; even so it does not fit: the patch was reduced to half the median image shape and the "
            "training gets fewer epochs"
        )
    values["compute"] = _value(
        {"target": target, **found["cost"]},
        budget_rule + lighter_note,
        cores=cores,
        gflops=gflops,
        max_minutes=max_minutes,
        gpu_memory_gb=gpu_memory_gb,
        tried=found["tried"],
    )
    values["patch_size"] = _value(
        found["patch"],
        "a 256^3 (2-D: 2048^2) voxel volume shaped by the target spacing, clipped to the median image "
        "shape, padded to a multiple of the network's total stride (nnU-Net v2)"
        + (
            "; reduced along the axis largest relative to the median shape until it fit the budget"
            if any(t["width"] == width.name for t in found["tried"])
            else ""
        ),
        median_shape=[_r(s) for s in geometry.median_shape],
        spacing=geometry.spacing,
    )
    values["network"] = _value(
        found["config"],
        f"{network} with {len(topo.strides) + 1} levels: an axis is halved while its feature map keeps >= "
        f"{2 * FEATUREMAP_MIN_EDGE} voxels and its spacing is within 2x of the finest (nnU-Net's "
        "get_pool_and_conv_props); widths double per level from the base, at most "
        f"{MAX_FEATURES[dims]}{lighter_note}",
        pools_per_axis=list(topo.pools_per_axis),
        strides=[list(s) for s in topo.strides],
        parameters=int(found["step"]["parameters"]),
        gflop_per_step=_r(found["step"]["gflop"]),
    )
    values["batch_size"] = _value(
        found["batch"],
        (
            f"as many samples as fit the memory budget, at least {MIN_BATCH_SIZE}, at most "
            f"{MAX_DATASET_FRACTION_PER_BATCH:.0%} of the dataset's voxels per batch (nnU-Net v2)"
            if target == "gpu"
            else f"CPU: {MIN_BATCH_SIZE} (a CPU step costs in proportion to the batch, so more, smaller steps "
            "converge faster per second; nnU-Net's minimum), 32 slices for a 2-D network on volumes; at "
            f"most {MAX_DATASET_FRACTION_PER_BATCH:.0%} of the dataset's voxels per batch"
        ),
        cap_for_5_percent=found["batch_cap"],
    )
    n_train = _train_cases(len(cases))
    per_epoch = math.ceil(
        n_train * (SLICES_PER_VOLUME if geometry.slice_axis is not None else 1) / found["batch"]
    )
    if target == "cpu":
        step_s = float(found["cost"]["seconds_per_step"])
        epochs = max(1, int(budget["seconds"] * CPU_BUDGET_TRAINING_SHARE / (step_s * per_epoch)))
        epochs_rule = (
            f"as many epochs as fit {CPU_BUDGET_TRAINING_SHARE:.0%} of the {max_minutes:g}-minute budget"
        )
        if epochs < MIN_EPOCHS:
            epochs_rule += (
                f" (fewer than the {MIN_EPOCHS} a CPU plan aims for: even the lightest network at half the median "
                "image shape is too slow for this budget; raise --max-minutes for a better model)"
            )
    else:
        epochs = max(MIN_EPOCHS, math.ceil(GPU_TRAINING_STEPS / per_epoch))
        epochs_rule = f"nnU-Net's {GPU_TRAINING_STEPS} training steps (1000 epochs of 250)"
    values["training"] = _value(
        {
            "test_fold": TEST_FOLD,
            "val_fold": VAL_FOLD,
            "train_folds": list(TRAIN_FOLDS),
            "max_epochs": epochs,
            "optimizer": "AdamW",
            "learning_rate": LEARNING_RATE,
            "weight_decay": WEIGHT_DECAY,
            "schedule": "cosine",
            "warmup_epochs": 0,
            "ema_decay": EMA_DECAY,
            "model_selection": "final EMA weights",
            "channels_last": target == "cpu" and network == "unet" and dims == 3,
            "track_meta_in_training": False,
        },
        f"{epochs_rule}; the hippocampus recipe's optimiser (AdamW {LEARNING_RATE:g} from the first step, cosine "
        f"decay, weight EMA up to {EMA_DECAY}); test-fold rule: fold 0 of the fixed split is the test fold, the "
        "network trains on folds 2-4 on a fixed schedule, is monitored on fold 1 and keeps its final EMA weights, "
        "so no decision looks at fold 0 (the hand-made recipe chose its best epoch on fold 0, which biases its "
        "figure)",
        train_cases=n_train,
        steps_per_epoch=per_epoch,
    )
    values["loss"] = _loss(fingerprint, len(dataset["labels"]))
    mirror = _mirror_axes(fingerprint, geometry, rgb)
    anisotropic = max(found["patch"]) / min(found["patch"]) > ANISOTROPY_THRESHOLD
    rotate = math.pi if rgb else 0.26
    values["augmentation"] = _value(
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
    values["inference"] = _value(
        {
            "roi_size": found["patch"],
            "overlap": 0.5,
            "mode": "gaussian",
            "sw_batch_size": 4 if geometry.slice_axis is None else 64,
        },
        "sliding window of the training patch, half overlapping, gaussian-weighted (nnU-Net's step 0.5); "
        "4 windows per call, 64 slices per call for a 2-D network on volumes (MONAI's SliceInferer)",
    )
    values["suitability"] = _suitability(fingerprint, spacing, mirror["value"], rgb)
    input_overrides, value_overrides = _split_overrides(overrides or {})
    apply_overrides(values, value_overrides, (overrides or {}).get(WHY_KEY))
    labels = dict(dataset["labels"])
    if "labels" in input_overrides:
        labels = _override_labels(labels, input_overrides["labels"])
    if "concepts" in input_overrides:
        concepts = input_overrides["concepts"]
    from medseg import __version__

    default_name = "".join(c if c.isalnum() else "_" for c in dataset["name"].lower()).strip("_")
    return {
        "plan_version": PLAN_VERSION,
        "medseg_version": __version__,
        "inputs": {
            "name": name or f"{default_name.split('__')[0]}_{network}{dims}d",
            "network": network,
            "dims": dims,
            "target": target,
            "dataset_folder": dataset_folder,
            "dataset": {
                k: dataset[k]
                for k in (
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
            }
            | {"labels": labels},
            "concepts": _concepts(concepts if concepts is not None else dataset.get("concepts"), labels),
            "metadata": _metadata_text(input_overrides.get("metadata", {})),
            "versions": installed_versions(),
        },
        "values": values,
    }


def explain(plan: Mapping[str, Any]) -> str:
    """Each planned value with its rule and the data behind it, as text for ``--explain``."""
    import json

    lines = [
        f"plan for {plan['inputs']['name']} ({plan['inputs']['network']}, {plan['inputs']['dims']}-D, "
        f"{plan['inputs']['target']})"
    ]
    for key, entry in plan["values"].items():
        lines.append(f"{key}: {json.dumps(entry['value'])}")
        lines.append(f"    rule: {entry['rule']}")
        if entry.get("data"):
            lines.append(f"    data: {json.dumps(entry['data'])}")
    return "\n".join(lines)
