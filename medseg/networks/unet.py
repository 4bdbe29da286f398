"""U-Net: MONAI's residual UNet with padding to its total stride.

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, arXiv:1505.04597; with the residual units of Kerfoot et al.,
"Left-Ventricle Quantification Using Residual U-Net", STACOM 2018, as implemented by
:class:`monai.networks.nets.UNet`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet as MonaiUNet

from medseg.networks.base import SegmentationModel
from medseg.networks.blocks import ActType, NormType
from medseg.networks.registry import network_spec

__all__ = ["UNet"]


class UNet(SegmentationModel):
    """MONAI's :class:`~monai.networks.nets.UNet` that accepts any input size.

    MONAI's UNet needs every spatial size divisible by the product of its strides; this
    wrapper pads the input to that multiple and crops the logits back. The defaults are a
    5-level residual U-Net (two residual units per level, instance norm, PReLU), as in
    MONAI's spleen and hippocampus tutorials. The wrapped network is ``self.unet``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        channels: channels per level, e.g. (16, 32, 64, 128, 256); fewer values for a
            shallower network.
        strides: downsampling stride between levels (``len(channels) - 1`` values; each an
            int or a per-axis sequence for anisotropic data).
        kernel_size: convolution kernel size.
        up_kernel_size: kernel size of the upsampling (transposed) convolutions.
        num_res_units: residual units per level (0 for plain convolutions).
        act: activation.
        norm: normalisation.
        dropout: dropout probability.
        bias: convolution biases.
        pad_mode: padding used to reach a multiple of the total stride.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2),
        kernel_size: int = 3,
        up_kernel_size: int = 3,
        num_res_units: int = 2,
        act: ActType = "PRELU",
        norm: NormType = "INSTANCE",
        dropout: float = 0.0,
        bias: bool = True,
        pad_mode: str = "constant",
    ) -> None:
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"strides needs len(channels) - 1 = {len(channels) - 1} values, got {len(strides)}."
            )
        super().__init__(
            spatial_dims, network_spec("unet").total_stride(spatial_dims, strides=strides), pad_mode
        )
        self.unet = MonaiUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=tuple(channels),
            strides=tuple(strides),
            kernel_size=kernel_size,
            up_kernel_size=up_kernel_size,
            num_res_units=num_res_units,
            act=act,
            norm=norm,
            dropout=dropout,
            bias=bias,
        )

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)
