"""FCN-8s for 2D and 3D images.

Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015, arXiv:1411.4038.

A VGG-style encoder (stages of 3x3 convolutions, each closed by 2x max pooling, total
stride 32) and the convolutionalised classifier ("fc6"/"fc7") produce coarse class scores
at stride 32. The FCN-8s decoder upsamples them 2x with a learned transposed convolution
initialised to bilinear interpolation, adds the scores predicted from the stride-16
features (pool4), upsamples 2x again, adds the scores from the stride-8 features (pool3),
and the head upsamples the fused stride-8 scores 8x with fixed (bi/tri)linear
interpolation. As in the paper, the skip score layers are zero-initialised so training
starts from the FCN-32s prediction. Differences: normalisation after each encoder
convolution (the paper has none; it trained from ImageNet VGG16), modest widths, no
ImageNet weights, and "fc6" is a 3x3 instead of a 7x7 convolution (a 7x7x7 kernel on a
2x2x2 stride-32 map would be mostly padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import UpSample
from monai.networks.layers.factories import Conv, Pool
from torch import nn

from medseg.networks.base import SegmentationModel
from medseg.networks.blocks import ActType, NormType, bilinear_upsampling_weights, conv_norm_act
from medseg.networks.registry import network_spec

__all__ = ["VGGEncoder", "FCN8sDecoder", "FCN"]


class VGGEncoder(nn.Module):
    """VGG-style encoder: five stages of 3x3 conv-norm-act, each followed by 2x max pooling.

    ``forward`` returns the pooled output of every stage (strides 2, 4, 8, 16, 32).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        channels: output channels of the five stages.
        convs_per_stage: convolutions per stage (one int or five values; VGG16 is (2, 2, 3, 3, 3)).
        act: activation.
        norm: normalisation.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        convs_per_stage: int | Sequence[int] = 2,
        act: ActType = "relu",
        norm: NormType = "instance",
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"FCN's encoder needs 5 stage widths (strides 2..32), got {tuple(channels)}.")
        counts = [convs_per_stage] * 5 if isinstance(convs_per_stage, int) else list(convs_per_stage)
        if len(counts) != 5 or min(counts) < 1:
            raise ValueError(f"convs_per_stage must be a positive int or 5 of them, got {convs_per_stage}.")
        stages = []
        prev = in_channels
        for width, count in zip(channels, counts, strict=True):
            layers: list[nn.Module] = []
            for i in range(count):
                layers.append(
                    conv_norm_act(spatial_dims, prev if i == 0 else width, width, 3, act=act, norm=norm)
                )
            layers.append(Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2))
            stages.append(nn.Sequential(*layers))
            prev = width
        self.stages = nn.ModuleList(stages)
        self.out_channels = tuple(int(c) for c in channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class FCN8sDecoder(nn.Module):
    """Score layers and skip fusion of FCN-8s: scores at stride 32, 16 and 8, summed after 2x upsampling.

    Returns the fused class scores at stride 8.

    Args:
        spatial_dims: 2 or 3.
        encoder_channels: channels of the five encoder outputs (strides 2..32).
        out_channels: number of classes.
        fc_channels: width of the convolutionalised classifier (4096 in VGG16).
        act: activation.
        dropout: dropout after fc6 and fc7 (0.5 in the paper).
    """

    def __init__(
        self,
        spatial_dims: int,
        encoder_channels: Sequence[int],
        out_channels: int,
        fc_channels: int = 256,
        act: ActType = "relu",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        drop = dropout if dropout > 0 else None
        # no normalisation in fc6/fc7 (as in VGG): the stride-32 map of a 3D crop can be a
        # single voxel, where instance norm is undefined
        self.classifier = nn.Sequential(
            conv_norm_act(
                spatial_dims, encoder_channels[4], fc_channels, 3, act=act, norm=None, dropout=drop
            ),
            conv_norm_act(spatial_dims, fc_channels, fc_channels, 1, act=act, norm=None, dropout=drop),
        )
        self.score_fr = conv(fc_channels, out_channels, kernel_size=1)
        self.score_pool4 = conv(encoder_channels[3], out_channels, kernel_size=1)
        self.score_pool3 = conv(encoder_channels[2], out_channels, kernel_size=1)
        self.upscore2 = self._learned_upsampling(spatial_dims, out_channels)
        self.upscore_pool4 = self._learned_upsampling(spatial_dims, out_channels)
        for layer in (self.score_pool4, self.score_pool3):  # start from the FCN-32s prediction
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def _learned_upsampling(spatial_dims: int, channels: int) -> nn.Module:
        """2x transposed convolution (kernel 4, stride 2) initialised to bilinear interpolation."""
        up = UpSample(
            spatial_dims, channels, channels, scale_factor=2, kernel_size=4, mode="deconv", bias=False
        )
        deconv = up.deconv
        with torch.no_grad():
            deconv.weight.copy_(bilinear_upsampling_weights(channels, 4, spatial_dims))
        return up

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pool3, pool4, pool5 = features[2], features[3], features[4]
        score = self.upscore2(self.score_fr(self.classifier(pool5))) + self.score_pool4(pool4)
        return self.upscore_pool4(score) + self.score_pool3(pool3)


class FCN(SegmentationModel):
    """FCN-8s (Long et al., CVPR 2015, arXiv:1411.4038) for 2D and 3D segmentation.

    Returns logits of the input's spatial size for any input size (padded internally to a
    multiple of 32 and cropped back).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logit channels).
        channels: widths of the five VGG-style encoder stages.
        convs_per_stage: convolutions per encoder stage (an int or five values).
        fc_channels: width of the convolutionalised classifier (fc6/fc7).
        act: activation (ReLU in the paper).
        norm: normalisation of the encoder (none in the paper; instance norm by default here).
        dropout: dropout after fc6 and fc7.
        align_corners: ``align_corners`` of the final 8x interpolation.
        pad_mode: padding used to reach a multiple of 32.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        convs_per_stage: int | Sequence[int] = 2,
        fc_channels: int = 256,
        act: ActType = "relu",
        norm: NormType = ("instance", {"affine": True}),
        dropout: float = 0.5,
        align_corners: bool = False,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__(spatial_dims, network_spec("fcn").total_stride(spatial_dims), pad_mode)
        self.encoder = VGGEncoder(spatial_dims, in_channels, channels, convs_per_stage, act, norm)
        self.decoder = FCN8sDecoder(
            spatial_dims, self.encoder.out_channels, out_channels, fc_channels, act, dropout
        )
        self.head = UpSample(
            spatial_dims,
            scale_factor=8,
            mode="nontrainable",
            interp_mode="linear",
            align_corners=align_corners,
        )
