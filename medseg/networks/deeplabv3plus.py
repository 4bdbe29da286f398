"""DeepLabV3+ for 2D and 3D images.

Chen, Zhu, Papandreou, Schroff, Adam, "Encoder-Decoder with Atrous Separable Convolution
for Semantic Image Segmentation", ECCV 2018, arXiv:1802.02611; the ASPP module from Chen,
Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv:1706.05587.

The structure follows the paper: a residual encoder whose last strides are replaced by
atrous convolution (output stride 8 or 16), ASPP on its output (1x1 conv, three atrous
3x3 convs, image pooling; concatenated and projected), and the V3+ decoder that upsamples
the ASPP features to stride 4, concatenates the stride-4 encoder features reduced to 48
channels by a 1x1 conv, refines them with two 3x3 convs, and upsamples the class scores to
the input size. Differences from the paper, chosen for small 3D medical crops on a CPU:
the encoder is a small ResNet (:class:`~medseg.networks.encoders.ResNetEncoder`, not
Xception/ResNet-101, no ImageNet weights), default widths are modest, the normalisation
is instance norm by default (batch norm with batch sizes of 1-2 is unreliable), and the
default 3D atrous rates are the paper's divided by 6, because 3D feature maps at stride
8 are ~5-12 voxels wide and a rate larger than the map only samples padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv
from torch import nn

from medseg.networks.base import SegmentationModel
from medseg.networks.blocks import ASPP, ActType, NormType, SeparableConvolution, conv_norm_act
from medseg.networks.encoders import ResNetEncoder
from medseg.networks.registry import network_spec

__all__ = ["DeepLabV3PlusDecoder", "DeepLabV3Plus", "default_atrous_rates"]


def default_atrous_rates(spatial_dims: int, output_stride: int) -> tuple[int, int, int]:
    """ASPP rates: the paper's (6, 12, 18) at output stride 16 in 2D, doubled at stride 8;
    in 3D the same divided by 6, i.e. (1, 2, 3) at stride 16 and (2, 4, 6) at stride 8.

    Args:
        spatial_dims: 2 or 3.
        output_stride: 8, 16 or 32.
    """
    rates = (6, 12, 18) if spatial_dims == 2 else (1, 2, 3)
    scale = {8: 2, 16: 1, 32: 1}.get(output_stride, 1)
    return tuple(r * scale for r in rates)  # type: ignore[return-value]


def _upsample(spatial_dims: int, scale: int, align_corners: bool) -> nn.Module:
    """Fixed (bi/tri)linear upsampling by ``scale`` (MONAI ``UpSample``)."""
    if scale == 1:
        return nn.Identity()
    return UpSample(
        spatial_dims,
        scale_factor=scale,
        mode="nontrainable",
        interp_mode="linear",
        align_corners=align_corners,
    )


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP + the DeepLabV3+ decoder (Sec. 3.1 of arXiv:1802.02611).

    Args:
        spatial_dims: 2 or 3.
        encoder_channels: channels of the encoder features (stem, stage 1, ..., stage 4).
        output_stride: stride of the last encoder features (8 or 16; 32 also works).
        low_level_index: index of the skip features (stride 4 in the paper) in the encoder output.
        low_level_stride: stride of those features relative to the input.
        atrous_rates: ASPP rates.
        aspp_channels: ASPP branch and projection channels.
        low_level_channels: channels the stride-4 skip is reduced to (48 in the paper).
        decoder_channels: channels of the two 3x3 refinement convs (256 in the paper).
        separable: atrous separable convolutions in ASPP and the decoder.
        act: activation.
        norm: normalisation.
        dropout: dropout after the ASPP projection.
        align_corners: ``align_corners`` of the upsampling.
    """

    def __init__(
        self,
        spatial_dims: int,
        encoder_channels: Sequence[int],
        output_stride: int,
        low_level_index: int = 1,
        low_level_stride: int = 4,
        atrous_rates: Sequence[int] = (2, 4, 6),
        aspp_channels: int = 128,
        low_level_channels: int = 48,
        decoder_channels: int = 128,
        separable: bool = True,
        act: ActType = "relu",
        norm: NormType = "instance",
        dropout: float = 0.1,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if output_stride % low_level_stride != 0:
            raise ValueError(
                f"output_stride {output_stride} is not a multiple of low_level_stride {low_level_stride}."
            )
        self.low_level_index = low_level_index
        self.aspp = ASPP(
            spatial_dims, encoder_channels[-1], aspp_channels, atrous_rates, separable, act, norm, dropout
        )
        self.up = _upsample(spatial_dims, output_stride // low_level_stride, align_corners)
        self.reduce = conv_norm_act(
            spatial_dims, encoder_channels[low_level_index], low_level_channels, 1, act=act, norm=norm
        )
        fused = aspp_channels + low_level_channels
        if separable:
            self.refine = nn.Sequential(
                SeparableConvolution(spatial_dims, fused, decoder_channels, 3, act=act, norm=norm),
                SeparableConvolution(spatial_dims, decoder_channels, decoder_channels, 3, act=act, norm=norm),
            )
        else:
            self.refine = nn.Sequential(
                conv_norm_act(spatial_dims, fused, decoder_channels, 3, act=act, norm=norm),
                conv_norm_act(spatial_dims, decoder_channels, decoder_channels, 3, act=act, norm=norm),
            )
        self.out_channels = decoder_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.up(self.aspp(features[-1]))
        low = self.reduce(features[self.low_level_index])
        return self.refine(torch.cat([x, low], dim=1))


class DeepLabV3Plus(SegmentationModel):
    """DeepLabV3+ (Chen et al., ECCV 2018, arXiv:1802.02611) for 2D and 3D segmentation.

    Returns logits of the input's spatial size for any input size (padded internally to a
    multiple of ``output_stride`` and cropped back).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        channels: encoder widths: stem and four residual stages (5 values).
        num_blocks: residual blocks per encoder stage (4 values).
        output_stride: 8 or 16 (atrous convolution replaces the later strides).
        atrous_rates: ASPP rates; ``None`` for :func:`default_atrous_rates`.
        aspp_channels: ASPP channels (256 in the paper).
        low_level_channels: channels of the reduced stride-4 skip (48 in the paper).
        low_level_stride: stride of the skip features fused by the decoder: 4 as in the
            paper, or 2 (the encoder stem) for structures only a few voxels thick, at the
            price of a decoder running at 8x (3D) more voxels.
        decoder_channels: decoder channels (256 in the paper).
        separable: atrous separable convolutions in ASPP and decoder (as in the paper).
        act: activation (ReLU in the paper).
        norm: normalisation: ``"instance"`` (default), ``"batch"``, ``("group", {"num_groups": 8})``.
        dropout: dropout after the ASPP projection.
        align_corners: ``align_corners`` of the bilinear/trilinear upsampling.
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
        atrous_rates: Sequence[int] | None = None,
        aspp_channels: int = 128,
        low_level_channels: int = 48,
        low_level_stride: int = 4,
        decoder_channels: int = 128,
        separable: bool = True,
        act: ActType = "relu",
        norm: NormType = ("instance", {"affine": True}),
        dropout: float = 0.1,
        align_corners: bool = False,
        pad_mode: str = "constant",
    ) -> None:
        if output_stride not in (8, 16):
            raise ValueError(f"DeepLabV3+ output_stride must be 8 or 16, got {output_stride}.")
        super().__init__(
            spatial_dims,
            network_spec("deeplabv3plus").total_stride(spatial_dims, output_stride=output_stride),
            pad_mode,
        )
        if atrous_rates is None:
            atrous_rates = default_atrous_rates(spatial_dims, output_stride)
        self.encoder = ResNetEncoder(
            spatial_dims, in_channels, channels, num_blocks, output_stride, act, norm
        )
        if low_level_stride not in (2, 4):
            raise ValueError(f"low_level_stride must be 2 or 4, got {low_level_stride}.")
        self.decoder = DeepLabV3PlusDecoder(
            spatial_dims,
            self.encoder.out_channels,
            output_stride,
            self.encoder.reductions.index(low_level_stride),
            low_level_stride,
            atrous_rates,
            aspp_channels,
            low_level_channels,
            decoder_channels,
            separable,
            act,
            norm,
            dropout,
            align_corners,
        )
        self.head = nn.Sequential(
            Conv[Conv.CONV, spatial_dims](decoder_channels, out_channels, kernel_size=1),
            _upsample(spatial_dims, low_level_stride, align_corners),
        )
