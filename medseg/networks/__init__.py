"""Segmentation networks for 2D and 3D images, built from MONAI blocks.

Every network takes ``spatial_dims``, ``in_channels`` and ``out_channels`` (plus width
options), and returns logits of the input's spatial size for any input size: inputs are
padded to a multiple of the network's total stride and the logits cropped back.

Create one by name with :func:`create` (``unet``, ``resencunet``, ``deeplabv3plus``, ``fcn``,
``segnet``, ``pspnet``), or by class path in a MONAI bundle config::

    "network_def": {"_target_": "medseg.networks.DeepLabV3Plus", "spatial_dims": 3,
                    "in_channels": 1, "out_channels": 3}
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from medseg.networks.registry import network_spec, network_specs

if TYPE_CHECKING:
    from torch import nn

    from medseg.networks.base import (
        Autocast,
        ChannelsLast,
        PadBatch,
        SegmentationModel,
        crop_padding,
        pad_to_multiple,
        to_channels_last,
    )
    from medseg.networks.deeplabv3plus import DeepLabV3Plus
    from medseg.networks.fcn import FCN
    from medseg.networks.pspnet import PSPNet
    from medseg.networks.resencunet import ResidualEncoderUNet
    from medseg.networks.segnet import SegNet
    from medseg.networks.unet import UNet

__all__ = [
    "SegmentationModel",
    "UNet",
    "ResidualEncoderUNet",
    "DeepLabV3Plus",
    "FCN",
    "SegNet",
    "PSPNet",
    "available",
    "create",
    "count_parameters",
    "pad_to_multiple",
    "crop_padding",
    "to_channels_last",
    "PadBatch",
    "ChannelsLast",
    "Autocast",
]

# Imported on first use, so that the registry (and ``medseg bundle check``) needs no torch.
_LAZY = {
    **dict.fromkeys(
        (
            "Autocast",
            "ChannelsLast",
            "PadBatch",
            "SegmentationModel",
            "crop_padding",
            "pad_to_multiple",
            "to_channels_last",
        ),
        "medseg.networks.base",
    ),
    "DeepLabV3Plus": "medseg.networks.deeplabv3plus",
    "FCN": "medseg.networks.fcn",
    "PSPNet": "medseg.networks.pspnet",
    "ResidualEncoderUNet": "medseg.networks.resencunet",
    "SegNet": "medseg.networks.segnet",
    "UNet": "medseg.networks.unet",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(spec.name for spec in network_specs())


def create(
    name: str, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, **options: Any
) -> nn.Module:
    """Create a network by name.

    Args:
        name: one of :func:`available` (case-insensitive; ``-`` and ``_`` are ignored, so
            ``"DeepLabV3-Plus"`` works).
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        options: keyword arguments of the network class (widths, norm, ...); every one
            has a default.

    Raises:
        ConfigError: unknown name.
    """
    network_class = network_spec(name).network_class()
    return network_class(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **options
    )


def count_parameters(network: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters of ``network``."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad or not trainable_only)
