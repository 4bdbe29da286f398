"""What medseg knows about each network in one place: its name, its class path and its total stride.

The total stride (the multiple every input axis is padded to) decides the smallest valid input, the
planner's patch sizes and the bundle's ``spatial_shape``; each network's constructor, the planner
and the bundle template read it from here, as nnU-Net keeps one ``ConfigurationManager`` per network
configuration. A new network is one new :class:`NetworkSpec` entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

from medseg.errors import ConfigError

__all__ = ["NETWORK_SPECS", "NetworkSpec", "network_spec", "total_stride"]


def _per_axis(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * spatial_dims


def _unet_stride(
    spatial_dims: int, strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2), **_: Any
) -> tuple[int, ...]:
    per_level = [_per_axis(s, spatial_dims) for s in strides]
    return tuple(prod(level[axis] for level in per_level) for axis in range(spatial_dims))


def _segnet_stride(
    spatial_dims: int, channels: Sequence[int] = (16, 32, 64, 128), **_: Any
) -> tuple[int, ...]:
    return (2 ** len(channels),) * spatial_dims


def _fcn_stride(spatial_dims: int, **_: Any) -> tuple[int, ...]:
    return (32,) * spatial_dims


def _output_stride(spatial_dims: int, output_stride: int = 8, **_: Any) -> tuple[int, ...]:
    return (int(output_stride),) * spatial_dims


@dataclass(frozen=True)
class NetworkSpec:
    """One network: the name ``medseg plan --network`` and :func:`medseg.networks.create` take, the
    class path bundle configs name, and its total-stride rule.

    Args:
        name: the short name (``unet``).
        target: the class path of ``network_def`` (``medseg.networks.UNet``).
        stride_rule: ``(spatial_dims, **constructor options) -> total stride per axis``.
    """

    name: str
    target: str
    stride_rule: Callable[..., tuple[int, ...]]

    @property
    def class_name(self) -> str:
        return self.target.rsplit(".", 1)[-1]

    def total_stride(self, spatial_dims: int, **options: Any) -> tuple[int, ...]:
        """The multiple every input axis is padded to, for these constructor options."""
        return self.stride_rule(spatial_dims, **options)


NETWORK_SPECS: tuple[NetworkSpec, ...] = (
    NetworkSpec("unet", "medseg.networks.UNet", _unet_stride),
    NetworkSpec("deeplabv3plus", "medseg.networks.DeepLabV3Plus", _output_stride),
    NetworkSpec("fcn", "medseg.networks.FCN", _fcn_stride),
    NetworkSpec("segnet", "medseg.networks.SegNet", _segnet_stride),
    NetworkSpec("pspnet", "medseg.networks.PSPNet", _output_stride),
)


def network_spec(name_or_target: str) -> NetworkSpec:
    """The spec of a network given by name (``unet``), class name (``UNet``) or class path.

    Raises:
        ConfigError: no such network.
    """
    key = name_or_target.rsplit(".", 1)[-1]
    for spec in NETWORK_SPECS:
        if key in (spec.name, spec.class_name):
            return spec
    names = ", ".join(spec.name for spec in NETWORK_SPECS)
    raise ConfigError(f"unknown network {name_or_target!r}; choose one of {names}")


def total_stride(network_def: Mapping[str, Any]) -> tuple[int, ...]:
    """The total stride of a ``network_def`` (``_target_`` and constructor arguments)."""
    options = {k: v for k, v in network_def.items() if k != "_target_"}
    return network_spec(str(network_def["_target_"])).total_stride(
        int(options.pop("spatial_dims")), **options
    )
