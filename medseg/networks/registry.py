"""What medseg knows about each network in one place: its name, its class, its total stride and how
the planner sizes it.

The total stride (the multiple every input axis is padded to) decides the smallest valid input, the
planner's patch sizes and the bundle's ``spatial_shape``; each network's constructor, the planner
and the bundle template read it from here, as nnU-Net keeps one ``ConfigurationManager`` per network
configuration. The planner asks each network for its ``network_def`` from a :class:`Design` (the
downsampling nnU-Net's rules chose and a width), so a new network is one new :class:`NetworkSpec`
subclass: defining it registers it for ``medseg plan --network``, :func:`medseg.networks.create`
and the bundle template.

This module does not import torch (``medseg bundle check`` re-renders bundles without it); the
network class is imported only when one is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any, ClassVar

from medseg.errors import ConfigError

__all__ = [
    "RESENC_BLOCKS_DOWN",
    "RESENC_BLOCKS_UP",
    "Design",
    "NetworkSpec",
    "network_spec",
    "network_specs",
    "resenc_blocks",
    "total_stride",
]

_SPECS: dict[str, NetworkSpec] = {}


def _per_axis(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * spatial_dims


@dataclass(frozen=True)
class Design:
    """What the planner decided for a network before it is one: dims, channels, downsampling, width.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes, background included.
        strides: per level, the stride of each axis (1 or 2), deepest last (nnU-Net's
            ``get_pool_and_conv_props``).
        patch_size: the training patch (a multiple of ``strides``' product).
        base: features of the first level; they double per level.
        blocks: convolution blocks (residual units) per level.
        max_features: the most features of any level.
        min_edge: the smallest feature-map edge the planner allows at the bottom of the network.
    """

    spatial_dims: int
    in_channels: int
    out_channels: int
    strides: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    base: int
    blocks: int
    max_features: int
    min_edge: int

    @property
    def levels(self) -> int:
        return len(self.strides) + 1

    @property
    def widths(self) -> list[int]:
        """Features per level, doubling from ``base`` up to ``max_features``."""
        return [min(self.base * 2**i, self.max_features) for i in range(self.levels)]

    @property
    def encoder_widths(self) -> list[int]:
        """Features of a five-stage ResNet/VGG encoder (stem, then four stages)."""
        return [self.base, self.base] + [min(self.base * 2**i, self.max_features) for i in range(1, 4)]

    @property
    def common(self) -> dict[str, int]:
        return {
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
        }


class NetworkSpec:
    """One network: its short name, the class path bundle configs name, its total-stride rule and its
    planned ``network_def``. Subclasses register themselves (one subclass per network).

    Attributes:
        name: the short name ``medseg plan --network`` and :func:`medseg.networks.create` take.
        target: the class path of ``network_def`` (``medseg.networks.UNet``).
    """

    name: ClassVar[str]
    target: ClassVar[str]
    description: ClassVar[str] = ""
    """What the network's blocks are, when the planned width does not say it (joins the plan's rule)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "target", ""):  # a shared base of several networks
            return
        if cls.name in _SPECS:
            raise ConfigError(f"network {cls.name!r} is registered twice; give the new one another name")
        _SPECS[cls.name] = cls()

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]

    def network_class(self) -> type:
        """The network's class (imports it, and with it torch)."""
        module, _, name = self.target.rpartition(".")
        return getattr(importlib.import_module(module), name)

    def total_stride(self, spatial_dims: int, **options: Any) -> tuple[int, ...]:
        """The multiple every input axis is padded to, for these constructor options."""
        raise NotImplementedError

    def network_def(self, design: Design) -> dict[str, Any]:
        """The ``network_def`` (``_target_`` and constructor arguments) for a planned design."""
        raise NotImplementedError

    def channels_last(self, spatial_dims: int) -> bool:
        """Whether a CPU training runs faster in channels-last memory layout (measured per network)."""
        return False


def _stride_product(spatial_dims: int, strides: Sequence[int | Sequence[int]]) -> tuple[int, ...]:
    """The total stride of an encoder whose levels stride by ``strides`` (per level, int or per axis)."""
    per_level = [_per_axis(s, spatial_dims) for s in strides]
    return tuple(prod(level[axis] for level in per_level) for axis in range(spatial_dims))


def _planned_strides(design: Design) -> list[Any]:
    """The planned strides as a config lists them: an int where every axis strides alike."""
    return [list(s) if len(set(s)) > 1 else s[0] for s in design.strides]


class UNetSpec(NetworkSpec):
    """MONAI's residual U-Net: its depth and per-axis strides are the planned ones."""

    name = "unet"
    target = "medseg.networks.UNet"

    def total_stride(
        self, spatial_dims: int, strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2), **_: Any
    ) -> tuple[int, ...]:
        return _stride_product(spatial_dims, strides)

    def network_def(self, design: Design) -> dict[str, Any]:
        return {
            "_target_": self.target,
            **design.common,
            "channels": design.widths,
            "strides": _planned_strides(design),
            "num_res_units": design.blocks,
            "norm": "instance",
        }

    def channels_last(self, spatial_dims: int) -> bool:
        return spatial_dims == 3


# nnU-Net's ResEnc presets (ResEncUNetPlanner): residual blocks per encoder stage, 6 for every deeper
# stage, and one convolution per decoder stage.
RESENC_BLOCKS_DOWN = (1, 3, 4, 6)
RESENC_BLOCKS_UP = 1


def resenc_blocks(levels: int) -> tuple[list[int], list[int]]:
    """nnU-Net's ResEnc block counts for ``levels`` levels: residual blocks per encoder stage and
    convolutions per decoder stage (shallowest first)."""
    last = len(RESENC_BLOCKS_DOWN) - 1
    down = [RESENC_BLOCKS_DOWN[min(level, last)] for level in range(levels)]
    return down, [RESENC_BLOCKS_UP] * (levels - 1)


class ResidualEncoderUNetSpec(NetworkSpec):
    """nnU-Net's residual-encoder U-Net (the ResEnc presets' network): the planned depth, strides and
    width, with nnU-Net's block counts whatever the width's ``blocks``."""

    name = "resencunet"
    target = "medseg.networks.ResidualEncoderUNet"
    description = (
        "nnU-Net's residual encoder: (1, 3, 4, 6, 6, ...) residual blocks per encoder stage, one "
        "convolution per decoder stage (nnU-Net's ResEnc presets, Isensee et al. 2024)"
    )

    def total_stride(
        self, spatial_dims: int, strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2), **_: Any
    ) -> tuple[int, ...]:
        return _stride_product(spatial_dims, strides)

    def network_def(self, design: Design) -> dict[str, Any]:
        down, up = resenc_blocks(design.levels)
        return {
            "_target_": self.target,
            **design.common,
            "channels": design.widths,
            "strides": _planned_strides(design),
            "blocks_down": down,
            "blocks_up": up,
            "norm": "instance",
        }


class _DilatedSpec(NetworkSpec):
    """A ResNet encoder with a dilated tail (DeepLabV3+, PSPNet): stride 16 when the patch keeps at
    least ``min_edge`` voxels at 1/16 along every axis, else 8."""

    def total_stride(self, spatial_dims: int, output_stride: int = 8, **_: Any) -> tuple[int, ...]:
        return (int(output_stride),) * spatial_dims

    def network_def(self, design: Design) -> dict[str, Any]:
        return {
            "_target_": self.target,
            **design.common,
            "channels": design.encoder_widths,
            "num_blocks": [1, design.blocks, design.blocks, 1],
            "output_stride": 16 if min(design.patch_size) >= 16 * design.min_edge else 8,
            "decoder_channels": 4 * design.base,  # 128 at nnU-Net's width, as hippocampus_deeplab3d
        }


class DeepLabV3PlusSpec(_DilatedSpec):
    name = "deeplabv3plus"
    target = "medseg.networks.DeepLabV3Plus"

    def network_def(self, design: Design) -> dict[str, Any]:
        return {
            **super().network_def(design),
            "low_level_stride": 2 if min(design.patch_size) < 64 else 4,
            "aspp_channels": 4 * design.base,
        }


class FCNSpec(NetworkSpec):
    """FCN-8s: a fixed five-stage encoder of stride 32."""

    name = "fcn"
    target = "medseg.networks.FCN"

    def total_stride(self, spatial_dims: int, **_: Any) -> tuple[int, ...]:
        return (32,) * spatial_dims

    def network_def(self, design: Design) -> dict[str, Any]:
        return {
            "_target_": self.target,
            **design.common,
            "channels": design.encoder_widths,
            "convs_per_stage": design.blocks,
        }


class SegNetSpec(NetworkSpec):
    """SegNet: one pooling per stage, one stage fewer than the planned levels."""

    name = "segnet"
    target = "medseg.networks.SegNet"

    def total_stride(
        self, spatial_dims: int, channels: Sequence[int] = (16, 32, 64, 128), **_: Any
    ) -> tuple[int, ...]:
        return (2 ** len(channels),) * spatial_dims

    def network_def(self, design: Design) -> dict[str, Any]:
        return {
            "_target_": self.target,
            **design.common,
            "channels": design.widths[: max(1, design.levels - 1)],
            "convs_per_stage": design.blocks,
        }


class PSPNetSpec(_DilatedSpec):
    name = "pspnet"
    target = "medseg.networks.PSPNet"


def network_specs() -> tuple[NetworkSpec, ...]:
    """Every registered network, in the order they were defined."""
    return tuple(_SPECS.values())


def network_spec(name_or_target: str) -> NetworkSpec:
    """The spec of a network given by name (``unet``, case, ``-`` and ``_`` ignored), class name
    (``UNet``) or class path.

    Raises:
        ConfigError: no such network.
    """
    key = name_or_target.rsplit(".", 1)[-1]
    loose = key.lower().replace("-", "").replace("_", "")
    for spec in _SPECS.values():
        if key in (spec.name, spec.class_name) or loose == spec.name:
            return spec
    names = ", ".join(spec.name for spec in network_specs())
    raise ConfigError(f"unknown network {name_or_target!r}; choose one of {names}")


def total_stride(network_def: Mapping[str, Any]) -> tuple[int, ...]:
    """The total stride of a ``network_def`` (``_target_`` and constructor arguments)."""
    options = {k: v for k, v in network_def.items() if k != "_target_"}
    return network_spec(str(network_def["_target_"])).total_stride(
        int(options.pop("spatial_dims")), **options
    )
