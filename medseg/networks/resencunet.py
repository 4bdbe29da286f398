"""Residual-encoder U-Net: the network of nnU-Net's ResEnc presets, built from MONAI blocks.

Isensee et al., "nnU-Net Revisited: A Call for Rigorous Validation in 3D Medical Image
Segmentation", MICCAI 2024, arXiv:2404.09556. nnU-Net's ``ResidualEncoderUNet`` (planned by
``nnUNetPlannerResEncM``, ``L`` and ``XL``) puts its depth in the encoder, residual blocks
(1, 3, 4, 6, 6, 6, ... per stage), and keeps the decoder light, one convolution per stage; at the
same GPU memory it beat nnU-Net's plain U-Net and the transformer networks of that comparison.
A GPU plan of ``medseg plan`` uses it by default (:mod:`medseg.plan.budget`).

The encoder's blocks are MONAI's :class:`~monai.networks.blocks.dynunet_block.UnetResBlock` (two
convolutions and a 1x1 projection when the shape changes, as DynUNet's), the first of each stage
strided; the decoder upsamples with a transposed convolution of the stage's stride, concatenates
the skip and applies ``conv -> norm -> act``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, get_conv_layer
from torch import nn

from medseg.networks.base import SegmentationModel
from medseg.networks.blocks import ActType, NormType, conv_norm_act
from medseg.networks.registry import network_spec, resenc_blocks

__all__ = ["ResidualEncoder", "ResidualEncoderUNet", "UNetDecoder"]

LEAKY_RELU: ActType = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})


class ResidualEncoder(nn.Module):
    """A stem convolution, then one stage of residual blocks per level; returns every stage's output.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: features per stage.
        strides: stride of each stage after the first (``len(channels) - 1`` values; each an int or
            a per-axis sequence).
        blocks_down: residual blocks per stage (``len(channels)`` values, each >= 1).
        kernel_size: convolution kernel size.
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        strides: Sequence[int | Sequence[int]],
        blocks_down: Sequence[int],
        kernel_size: int = 3,
        act: ActType = LEAKY_RELU,
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        self.stem = conv_norm_act(spatial_dims, in_channels, channels[0], kernel_size, act=act, norm=norm)
        stages = []
        for level, (width, count) in enumerate(zip(channels, blocks_down, strict=True)):
            stride = 1 if level == 0 else strides[level - 1]
            previous = channels[max(0, level - 1)]
            stages.append(
                nn.Sequential(
                    *(
                        UnetResBlock(
                            spatial_dims,
                            previous if i == 0 else width,
                            width,
                            kernel_size=kernel_size,
                            stride=stride if i == 0 else 1,
                            norm_name=norm,
                            act_name=act,
                        )
                        for i in range(count)
                    )
                )
            )
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """From the deepest features up: transposed convolution of the level's stride, concatenation with
    the skip, ``blocks_up`` convolutions; returns the features of the first level.

    Args:
        spatial_dims: 2 or 3.
        channels: features per level (as the encoder's).
        strides: the encoder's strides (``len(channels) - 1`` values).
        blocks_up: convolutions per decoder stage, shallowest first (``len(channels) - 1`` values).
        kernel_size: convolution kernel size.
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        strides: Sequence[int | Sequence[int]],
        blocks_up: Sequence[int],
        kernel_size: int = 3,
        act: ActType = LEAKY_RELU,
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        self.upsample = nn.ModuleList(
            get_conv_layer(
                spatial_dims,
                channels[level + 1],
                channels[level],
                kernel_size=strides[level],
                stride=strides[level],
                bias=True,
                conv_only=True,
                is_transposed=True,
            )
            for level in range(len(channels) - 1)
        )
        self.convs = nn.ModuleList(
            nn.Sequential(
                *(
                    conv_norm_act(
                        spatial_dims,
                        2 * channels[level] if i == 0 else channels[level],
                        channels[level],
                        kernel_size,
                        act=act,
                        norm=norm,
                    )
                    for i in range(blocks_up[level])
                )
            )
            for level in range(len(channels) - 1)
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for level in reversed(range(len(self.convs))):
            x = self.convs[level](torch.cat([self.upsample[level](x), features[level]], dim=1))
        return x


class ResidualEncoderUNet(SegmentationModel):
    """nnU-Net's residual-encoder U-Net (the ResEnc presets' network) that accepts any input size.

    The defaults are nnU-Net's ResEnc network at five levels: 32-320 features, (1, 3, 4, 6, 6)
    residual blocks per encoder stage, one convolution per decoder stage, instance norm and leaky
    ReLU; ``medseg plan`` sets the depth and per-axis strides from the patch (nnU-Net's
    ``get_pool_and_conv_props``). The input is padded to a multiple of the total stride and the
    logits cropped back. Deep supervision is not used (medseg's trainers take one output).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        channels: features per level.
        strides: downsampling stride between levels (``len(channels) - 1`` values; each an int or
            a per-axis sequence for anisotropic data).
        blocks_down: residual blocks per encoder stage (``len(channels)`` values; default nnU-Net's
            1, 3, 4, 6, 6, ...).
        blocks_up: convolutions per decoder stage, shallowest first (``len(channels) - 1`` values;
            default one each, as nnU-Net's).
        kernel_size: convolution kernel size.
        act: activation.
        norm: normalisation.
        pad_mode: padding used to reach a multiple of the total stride.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256, 320),
        strides: Sequence[int | Sequence[int]] = (2, 2, 2, 2),
        blocks_down: Sequence[int] | None = None,
        blocks_up: Sequence[int] | None = None,
        kernel_size: int = 3,
        act: ActType = LEAKY_RELU,
        norm: NormType = "instance",
        pad_mode: str = "constant",
    ) -> None:
        levels = len(channels)
        default_down, default_up = resenc_blocks(levels)
        blocks_down = default_down if blocks_down is None else list(blocks_down)
        blocks_up = default_up if blocks_up is None else list(blocks_up)
        for name, values, expected in (
            ("strides", strides, levels - 1),
            ("blocks_down", blocks_down, levels),
            ("blocks_up", blocks_up, levels - 1),
        ):
            if len(values) != expected:
                raise ValueError(f"{name} needs {expected} values for {levels} levels, got {len(values)}.")
        if min(blocks_down) < 1 or (levels > 1 and min(blocks_up) < 1):
            raise ValueError("every stage needs at least one block (blocks_down, blocks_up >= 1).")
        super().__init__(
            spatial_dims,
            network_spec("resencunet").total_stride(spatial_dims, strides=strides),
            pad_mode,
        )
        self.encoder = ResidualEncoder(
            spatial_dims, in_channels, channels, strides, blocks_down, kernel_size, act, norm
        )
        self.decoder = UNetDecoder(spatial_dims, channels, strides, blocks_up, kernel_size, act, norm)
        self.head = UnetOutBlock(spatial_dims, channels[0], out_channels)
