"""Dilated residual encoder shared by DeepLabV3+ and PSPNet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medseg.networks.blocks import ActType, NormType, ResidualStage, conv_norm_act

__all__ = ["ResNetEncoder"]


class ResNetEncoder(nn.Module):
    """ResNet-style encoder whose last strides can be replaced by atrous convolution.

    A stem of two 3x3 convolutions (the first with stride 2; the "deep stem" of ResNet-C,
    which keeps more detail on small medical crops than ResNet's 7x7 conv + max pool)
    followed by four stages of :class:`~medseg.networks.blocks.ResidualBlock` at strides
    4, 8, 16 and 32. For ``output_stride`` 16 the last stage, for 8 the last two stages,
    keep stride 1 and dilate instead (rates 2 and 4), as in DeepLab (Chen et al.,
    arXiv:1706.05587, Sec. 3.1) and PSPNet.

    ``forward`` returns the features of the stem and of every stage (five tensors);
    ``reductions`` gives their strides relative to the input.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: output channels of the stem and of the four stages (5 values).
        num_blocks: residual blocks per stage (4 values).
        output_stride: stride of the last features: 8, 16 or 32.
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (32, 32, 64, 128, 256),
        num_blocks: Sequence[int] = (1, 1, 1, 1),
        output_stride: int = 8,
        act: ActType = "relu",
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"channels needs 5 values (stem + 4 stages), got {tuple(channels)}.")
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks needs 4 values (one per stage), got {tuple(num_blocks)}.")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}.")
        self.output_stride = output_stride
        self.out_channels = tuple(int(c) for c in channels)
        self.stem = nn.Sequential(
            conv_norm_act(spatial_dims, in_channels, channels[0], 3, strides=2, act=act, norm=norm),
            conv_norm_act(spatial_dims, channels[0], channels[0], 3, act=act, norm=norm),
        )
        stride, dilation = 2, 1
        reductions = [stride]
        stages = []
        for i in range(4):
            if stride < output_stride:
                stage_stride, stride = 2, stride * 2
            else:  # atrous: keep the resolution, grow the receptive field instead
                stage_stride, dilation = 1, dilation * 2
            stages.append(
                ResidualStage(
                    spatial_dims,
                    channels[i],
                    channels[i + 1],
                    num_blocks[i],
                    stage_stride,
                    dilation,
                    act,
                    norm,
                )
            )
            reductions.append(stride)
        self.stages = nn.ModuleList(stages)
        self.reductions = tuple(reductions)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features
