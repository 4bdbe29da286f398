"""PSPNet for 2D and 3D images.

Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017, arXiv:1612.01105.

A dilated residual encoder (output stride 8: the last two stages use atrous convolution
instead of striding), the pyramid pooling module on its output (average pooling to 1, 2, 3
and 6 bins per axis, a 1x1 convolution each, upsampled and concatenated with the
features), a 3x3 conv-norm-act with dropout, a 1x1 classifier at stride 8, and bilinear
(trilinear) upsampling to the input size. The paper's auxiliary loss on stage 3 is not
included (it is a training device, not part of the inference network); the encoder is a
small ResNet without ImageNet weights, with instance norm by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv
from torch import nn

from medseg.networks.base import SegmentationModel
from medseg.networks.blocks import ActType, NormType, PyramidPooling, conv_norm_act
from medseg.networks.encoders import ResNetEncoder
from medseg.networks.registry import network_spec

__all__ = ["PSPDecoder", "PSPNet"]


class PSPDecoder(nn.Module):
    """Pyramid pooling module followed by a 3x3 conv-norm-act and dropout.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the last encoder features.
        bins: pyramid bin sizes.
        out_channels: channels of the 3x3 convolution (512 in the paper).
        act: activation.
        norm: normalisation.
        dropout: dropout before the classifier (0.1 in the paper).
        align_corners: ``align_corners`` of the pyramid upsampling.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        out_channels: int = 128,
        act: ActType = "relu",
        norm: NormType = "instance",
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(spatial_dims, in_channels, bins, act, norm, align_corners)
        self.bottleneck = conv_norm_act(
            spatial_dims,
            self.ppm.out_channels,
            out_channels,
            3,
            act=act,
            norm=norm,
            dropout=dropout if dropout > 0 else None,
        )
        self.out_channels = out_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.bottleneck(self.ppm(features[-1]))


class PSPNet(SegmentationModel):
    """PSPNet (Zhao et al., CVPR 2017, arXiv:1612.01105) for 2D and 3D segmentation.

    Returns logits of the input's spatial size for any input size (padded internally to a
    multiple of ``output_stride`` and cropped back).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        channels: encoder widths: stem and four residual stages (5 values).
        num_blocks: residual blocks per encoder stage (4 values).
        output_stride: 8 (paper) or 16.
        bins: pyramid pooling bin sizes.
        decoder_channels: channels after the pyramid pooling module (512 in the paper).
        act: activation.
        norm: normalisation.
        dropout: dropout before the classifier.
        align_corners: ``align_corners`` of the upsampling.
        pad_mode: padding used to reach a multiple of ``output_stride``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 32, 64, 128, 256),
        num_blocks: Sequence[int] = (1, 2, 2, 1),
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        decoder_channels: int = 128,
        act: ActType = "relu",
        norm: NormType = ("instance", {"affine": True}),
        dropout: float = 0.1,
        align_corners: bool = False,
        pad_mode: str = "constant",
    ) -> None:
        if output_stride not in (8, 16):
            raise ValueError(f"PSPNet output_stride must be 8 or 16, got {output_stride}.")
        super().__init__(
            spatial_dims,
            network_spec("pspnet").total_stride(spatial_dims, output_stride=output_stride),
            pad_mode,
        )
        self.encoder = ResNetEncoder(
            spatial_dims, in_channels, channels, num_blocks, output_stride, act, norm
        )
        self.decoder = PSPDecoder(
            spatial_dims,
            self.encoder.out_channels[-1],
            bins,
            decoder_channels,
            act,
            norm,
            dropout,
            align_corners,
        )
        self.head = nn.Sequential(
            Conv[Conv.CONV, spatial_dims](decoder_channels, out_channels, kernel_size=1),
            UpSample(
                spatial_dims,
                scale_factor=output_stride,
                mode="nontrainable",
                interp_mode="linear",
                align_corners=align_corners,
            ),
        )
