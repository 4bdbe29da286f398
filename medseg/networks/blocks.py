"""Building blocks shared by the networks, made of MONAI layers and factories.

All blocks are ``spatial_dims``-generic (2D and 3D). ``act`` and ``norm`` follow MONAI's
convention: a name (``"relu"``, ``"instance"``, ``"batch"``) or a ``(name, kwargs)`` tuple
(``("group", {"num_groups": 8})``), resolved by :mod:`monai.networks.layers.factories`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from monai.networks.layers.utils import get_act_layer
from torch import nn

__all__ = [
    "ActType",
    "NormType",
    "conv_norm_act",
    "SeparableConvolution",
    "ResidualBlock",
    "ResidualStage",
    "ASPP",
    "PyramidPooling",
    "adaptive_avg_pool",
    "bilinear_upsampling_weights",
]

ActType = str | tuple
NormType = str | tuple | None


def conv_norm_act(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    strides: int = 1,
    dilation: int = 1,
    act: ActType | None = "relu",
    norm: NormType = "instance",
    dropout: float | None = None,
    groups: int = 1,
) -> Convolution:
    """``conv -> norm -> dropout -> act`` with "same" padding (MONAI :class:`Convolution`).

    The convolution has a bias only when there is no normalisation to absorb it.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: convolution kernel size.
        strides: convolution stride.
        dilation: convolution dilation (atrous rate).
        act: activation, ``None`` for none.
        norm: normalisation, ``None`` for none.
        dropout: dropout probability, ``None`` for none.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
    """
    return Convolution(
        spatial_dims,
        in_channels,
        out_channels,
        strides=strides,
        kernel_size=kernel_size,
        dilation=dilation,
        act=act,
        norm=norm,
        dropout=dropout,
        groups=groups,
        bias=norm is None,
    )


class SeparableConvolution(nn.Sequential):
    """Atrous depthwise-separable convolution of DeepLabV3+ (Chen et al., ECCV 2018, Sec. 3.1).

    A depthwise ``kernel_size`` convolution at rate ``dilation`` followed by a pointwise
    1x1 convolution, each with normalisation and activation as in the reference
    implementation's ``split_separable_conv2d``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size.
        dilation: atrous rate of the depthwise convolution.
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilation: int = 1,
        act: ActType = "relu",
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        self.add_module(
            "depthwise",
            conv_norm_act(
                spatial_dims,
                in_channels,
                in_channels,
                kernel_size,
                dilation=dilation,
                act=act,
                norm=norm,
                groups=in_channels,
            ),
        )
        self.add_module(
            "pointwise", conv_norm_act(spatial_dims, in_channels, out_channels, 1, act=act, norm=norm)
        )


class ResidualBlock(nn.Module):
    """ResNet basic block (He et al., CVPR 2016): two 3x3 convolutions and an identity or 1x1 shortcut.

    ``conv(stride, dilation) -> norm -> act -> conv(dilation) -> norm``, added to the
    shortcut (a strided 1x1 convolution + norm when the shape changes), then ``act``.
    Unlike MONAI's :class:`~monai.networks.blocks.ResidualUnit`, the projection is 1x1 (as
    in ResNet) and dilation is supported together with a projection, which the dilated
    stages of DeepLab and PSPNet need.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        strides: stride of the first convolution and of the shortcut.
        dilation: dilation of both convolutions.
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        strides: int = 1,
        dilation: int = 1,
        act: ActType = "relu",
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        self.conv1 = conv_norm_act(
            spatial_dims, in_channels, out_channels, 3, strides, dilation, act=act, norm=norm
        )
        self.conv2 = conv_norm_act(
            spatial_dims, out_channels, out_channels, 3, 1, dilation, act=None, norm=norm
        )
        self.shortcut: nn.Module = nn.Identity()
        if strides != 1 or in_channels != out_channels:
            self.shortcut = conv_norm_act(
                spatial_dims, in_channels, out_channels, 1, strides, act=None, norm=norm
            )
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResidualStage(nn.Sequential):
    """A ResNet stage: ``num_blocks`` :class:`ResidualBlock`, the first one strided.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels of every block.
        num_blocks: number of blocks (>= 1).
        strides: stride of the first block.
        dilation: dilation of every block (atrous stage when ``strides == 1``).
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_blocks: int = 2,
        strides: int = 2,
        dilation: int = 1,
        act: ActType = "relu",
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}.")
        for i in range(num_blocks):
            self.add_module(
                f"block{i}",
                ResidualBlock(
                    spatial_dims,
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    strides=strides if i == 0 else 1,
                    dilation=dilation,
                    act=act,
                    norm=norm,
                ),
            )


class _ImagePooling(nn.Module):
    """Global average pooling -> 1x1 conv -> act, broadcast back to the input size.

    There is no normalisation: instance norm over a single voxel outputs zeros, and batch
    norm over a 1x1 map is unstable with the batch sizes of 3D medical training.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, act: ActType) -> None:
        super().__init__()
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.conv = conv_norm_act(spatial_dims, in_channels, out_channels, 1, act=act, norm=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.pool(x))
        return y.expand(-1, -1, *x.shape[2:])


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling of DeepLabV3 (Chen et al., arXiv:1706.05587, Sec. 3.3).

    Parallel branches on the encoder output: a 1x1 convolution, one 3x3 atrous convolution
    per rate, and image-level pooling; concatenated and projected by a 1x1 convolution.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the encoder output.
        out_channels: channels of every branch and of the projection (256 in the paper).
        atrous_rates: dilation rates of the atrous branches ((6, 12, 18) at output stride
            16 in the paper, doubled at output stride 8).
        separable: atrous separable convolutions (DeepLabV3+) instead of plain ones.
        act: activation.
        norm: normalisation (not applied to the image-pooling branch).
        dropout: dropout after the projection.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 256,
        atrous_rates: Sequence[int] = (6, 12, 18),
        separable: bool = True,
        act: ActType = "relu",
        norm: NormType = "instance",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [
            conv_norm_act(spatial_dims, in_channels, out_channels, 1, act=act, norm=norm)
        ]
        for rate in atrous_rates:
            if separable:
                branches.append(
                    SeparableConvolution(
                        spatial_dims, in_channels, out_channels, 3, int(rate), act=act, norm=norm
                    )
                )
            else:
                branches.append(
                    conv_norm_act(
                        spatial_dims, in_channels, out_channels, 3, dilation=int(rate), act=act, norm=norm
                    )
                )
        branches.append(_ImagePooling(spatial_dims, in_channels, out_channels, act))
        self.branches = nn.ModuleList(branches)
        self.project = conv_norm_act(
            spatial_dims,
            len(branches) * out_channels,
            out_channels,
            1,
            act=act,
            norm=norm,
            dropout=dropout if dropout > 0 else None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def _pooling_matrix(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``(bins, size)`` matrix whose rows average the cells of :func:`torch.nn.AdaptiveAvgPool1d`.

    Cell ``i`` covers ``[floor(i * size / bins), ceil((i + 1) * size / bins))``, PyTorch's rule.
    """
    index = torch.arange(size, device=like.device)
    cell = torch.arange(bins, device=like.device)
    start = torch.div(cell * size, bins, rounding_mode="floor")
    end = torch.div((cell + 1) * size + bins - 1, bins, rounding_mode="floor")
    inside = (index[None, :] >= start[:, None]) & (index[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """Adaptive average pooling to ``bins`` cells per spatial axis, as matrix products.

    Equal to ``AdaptiveAvgPool{2,3}d(bins)``, but exportable to ONNX: neither the TorchScript
    nor the dynamo exporter of torch 2.13 converts ``adaptive_avg_pool3d`` to a size that
    does not divide the input (nor, for dynamo, any 3D size other than 1).

    Args:
        x: tensor ``B C *spatial``.
        bins: output cells per spatial axis.
    """
    last = x.dim() - 1  # explicit index: the TorchScript exporter mistranslates movedim(-1)
    for axis in range(2, x.dim()):
        weights = _pooling_matrix(x.shape[axis], bins, x)
        x = torch.matmul(x.movedim(axis, last), weights.t()).movedim(last, axis)
    return x


class _PoolingBranch(nn.Module):
    """Adaptive average pooling to ``bins`` cells, then a 1x1 conv-(norm)-act."""

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, bins: int, act: ActType, norm: NormType
    ) -> None:
        super().__init__()
        self.bins = bins
        self.conv = conv_norm_act(spatial_dims, in_channels, out_channels, 1, act=act, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(adaptive_avg_pool(x, self.bins))


class PyramidPooling(nn.Module):
    """Pyramid pooling module of PSPNet (Zhao et al., CVPR 2017, arXiv:1612.01105, Sec. 3.2).

    For every bin size, adaptive average pooling to ``bin`` cells per axis, a 1x1
    convolution to ``in_channels // len(bins)`` channels, and upsampling back to the
    input size; the branches are concatenated with the input.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        bins: pooled grid sizes, (1, 2, 3, 6) in the paper.
        act: activation.
        norm: normalisation of the branches; the 1-cell branch has none (instance norm of
            one value is zero).
        align_corners: ``align_corners`` of the upsampling.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        bins: Sequence[int] = (1, 2, 3, 6),
        act: ActType = "relu",
        norm: NormType = "instance",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        branch_channels = max(1, in_channels // len(bins))
        self.bins = tuple(int(b) for b in bins)
        self.stages = nn.ModuleList(
            _PoolingBranch(spatial_dims, in_channels, branch_channels, b, act, None if b == 1 else norm)
            for b in self.bins
        )
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.align_corners = align_corners
        self.out_channels = in_channels + len(self.bins) * branch_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        pooled = [
            nn.functional.interpolate(stage(x), size=size, mode=self.mode, align_corners=self.align_corners)
            for stage in self.stages
        ]
        return torch.cat([x, *pooled], dim=1)


def bilinear_upsampling_weights(channels: int, kernel_size: int, spatial_dims: int) -> torch.Tensor:
    """Weights of a transposed convolution that performs (bi/tri)linear upsampling per channel.

    The initialisation of the learnable upsampling layers of FCN (Long et al., CVPR 2015,
    Sec. 3.3): the separable triangle filter on the diagonal, zeros off the diagonal.

    Args:
        channels: in and out channels of the transposed convolution.
        kernel_size: kernel size (``2 * factor - factor % 2``).
        spatial_dims: 2 or 3.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - torch.abs(og - center) / factor
    filt = filt1d
    for _ in range(spatial_dims - 1):
        filt = filt.unsqueeze(-1) * filt1d
    weight = torch.zeros((channels, channels) + (kernel_size,) * spatial_dims)
    for c in range(channels):
        weight[c, c] = filt
    return weight
