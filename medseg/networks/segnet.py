"""SegNet for 2D and 3D images.

Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation", IEEE TPAMI 2017, arXiv:1511.00561.

The encoder is VGG-like: stages of 3x3 conv-norm-act closed by 2x max pooling that keeps
the argmax indices (``return_indices=True``). The decoder mirrors it: each stage first
max-unpools with the indices of the matching encoder stage (``MaxUnpool2d``/``MaxUnpool3d``:
the value goes back to the position of the maximum, zeros elsewhere; no learned
upsampling and no transferred feature maps, which is SegNet's memory argument), then
densifies the sparse map with 3x3 convolutions. A 1x1 convolution classifies. SegNet has
five stages (VGG16); the default here has four (total stride 16), for small 3D crops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from medseg.networks.base import SegmentationModel
from medseg.networks.blocks import ActType, NormType, conv_norm_act
from medseg.networks.registry import network_spec

__all__ = ["MaxUnpool", "SegNetEncoder", "SegNetDecoder", "SegNet"]

_UNPOOL = {1: nn.MaxUnpool1d, 2: nn.MaxUnpool2d, 3: nn.MaxUnpool3d}


class MaxUnpool(nn.Module):
    """2x max unpooling with the indices of a ``MaxPool(kernel_size=2, stride=2, return_indices=True)``.

    Eager and ``torch.export``/dynamo ONNX export use ``MaxUnpool2d``/``MaxUnpool3d``.
    Under ``torch.jit.trace`` (also used by the TorchScript ONNX exporter) the same
    operation is written as a scatter into zeros, because torch 2.13's ``F.max_unpool*d``
    cannot be traced: its output-size check receives traced sizes and raises ``TypeError``.
    The indices of non-overlapping 2x pooling are unique, so the scatter is exact.

    Args:
        spatial_dims: 2 or 3.
    """

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.unpool = _UNPOOL[spatial_dims](kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            return self.unpool(x, indices)
        batch, channels = x.shape[0], x.shape[1]
        out_shape = [2 * s for s in x.shape[2:]]
        flat = x.new_zeros(batch, channels, math.prod(out_shape))
        flat = flat.scatter(2, indices.flatten(2), x.flatten(2))
        return flat.view(batch, channels, *out_shape)


def _conv_stack(
    spatial_dims: int, in_channels: int, out_channels: int, count: int, act: ActType, norm: NormType
) -> nn.Sequential:
    return nn.Sequential(
        *(
            conv_norm_act(
                spatial_dims, in_channels if i == 0 else out_channels, out_channels, 3, act=act, norm=norm
            )
            for i in range(count)
        )
    )


def _conv_stack_mirror(
    spatial_dims: int, in_channels: int, out_channels: int, count: int, act: ActType, norm: NormType
) -> nn.Sequential:
    """Decoder convolutions: keep ``in_channels`` and change the width in the last one (as SegNet)."""
    return nn.Sequential(
        *(
            conv_norm_act(
                spatial_dims,
                in_channels,
                out_channels if i == count - 1 else in_channels,
                3,
                act=act,
                norm=norm,
            )
            for i in range(count)
        )
    )


class SegNetEncoder(nn.Module):
    """Convolution stages, each followed by 2x max pooling that returns its indices.

    ``forward`` returns the bottleneck features and the pooling indices of every stage
    (shallowest first).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: output channels of each stage.
        convs_per_stage: 3x3 convolutions per stage.
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        convs_per_stage: int = 2,
        act: ActType = "relu",
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        prev = in_channels
        stages = []
        for width in channels:
            stages.append(_conv_stack(spatial_dims, prev, width, convs_per_stage, act, norm))
            prev = width
        self.stages = nn.ModuleList(stages)
        self.pool = Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2, return_indices=True)
        self.out_channels = tuple(int(c) for c in channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        indices = []
        for stage in self.stages:
            x, idx = self.pool(stage(x))
            indices.append(idx)
        return x, indices


class SegNetDecoder(nn.Module):
    """Max-unpooling with the encoder's indices, each followed by 3x3 convolutions.

    Decoder stage ``i`` (deepest first) unpools to the size of encoder stage ``i``, and
    convolves to the width of the next shallower stage (the last one keeps
    ``channels[0]``), mirroring the encoder.

    Args:
        spatial_dims: 2 or 3.
        channels: widths of the encoder stages (shallowest first).
        convs_per_stage: 3x3 convolutions per stage.
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        convs_per_stage: int = 2,
        act: ActType = "relu",
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        self.unpool = MaxUnpool(spatial_dims)
        widths = list(channels)
        stages = []
        for i in reversed(range(len(widths))):
            out = widths[i - 1] if i > 0 else widths[0]
            stages.append(_conv_stack_mirror(spatial_dims, widths[i], out, convs_per_stage, act, norm))
        self.stages = nn.ModuleList(stages)
        self.out_channels = widths[0]

    def forward(self, encoded: tuple[torch.Tensor, list[torch.Tensor]]) -> torch.Tensor:
        x, indices = encoded
        for stage, idx in zip(self.stages, reversed(indices), strict=True):
            # the unpooled size is twice the pooled one: inputs are padded to the total stride
            x = stage(self.unpool(x, idx))
        return x


class SegNet(SegmentationModel):
    """SegNet (Badrinarayanan et al., TPAMI 2017, arXiv:1511.00561) for 2D and 3D segmentation.

    Returns logits of the input's spatial size for any input size (padded internally to a
    multiple of ``2 ** len(channels)`` and cropped back).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        channels: widths of the encoder stages (one 2x pooling each).
        convs_per_stage: 3x3 convolutions per encoder and decoder stage.
        act: activation.
        norm: normalisation (batch norm in the paper; instance norm by default here).
        pad_mode: padding used to reach a multiple of the total stride.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        convs_per_stage: int = 2,
        act: ActType = "relu",
        norm: NormType = ("instance", {"affine": True}),
        pad_mode: str = "constant",
    ) -> None:
        if len(channels) < 1 or convs_per_stage < 1:
            raise ValueError("SegNet needs at least one stage and one convolution per stage.")
        super().__init__(
            spatial_dims, network_spec("segnet").total_stride(spatial_dims, channels=channels), pad_mode
        )
        self.encoder = SegNetEncoder(spatial_dims, in_channels, channels, convs_per_stage, act, norm)
        self.decoder = SegNetDecoder(spatial_dims, channels, convs_per_stage, act, norm)
        self.head = Conv[Conv.CONV, spatial_dims](self.decoder.out_channels, out_channels, kernel_size=1)
