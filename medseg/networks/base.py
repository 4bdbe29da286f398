"""Shared base of the segmentation networks: pad to the network's stride, run, crop back.

Every network in :mod:`medseg.networks` downsamples its input by a fixed total stride
(8, 16 or 32 per axis). Rather than failing on sizes that are not a multiple of that
stride (hippocampus crops are e.g. 35x51x35), the input is zero-padded symmetrically up to
the next multiple and the logits are cropped back to the input grid, so a network returns
one logit per input voxel for any input size. Symmetric padding keeps the object centred,
as MONAI's ``DivisiblePad(method="symmetric")`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.utils import ensure_tuple_rep
from torch import nn

__all__ = [
    "pad_to_multiple",
    "crop_padding",
    "SegmentationModel",
    "PadBatch",
    "channels_last_format",
    "to_channels_last",
    "ChannelsLast",
    "Autocast",
]


def _no_padding(pads: Sequence[tuple[int, int]]) -> bool:
    """True when nothing is padded and the graph is not being captured for export.

    A trace (``torch.jit.trace``, TorchScript ONNX export) or ``torch.export`` graph keeps
    the pad and crop even when the example input needs none, so that the exported model
    with dynamic axes still pads the sizes that do need it.
    """
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    return all(before == 0 and after == 0 for before, after in pads)


def pad_to_multiple(
    x: torch.Tensor, multiple: Sequence[int] | int, mode: str = "constant", value: float = 0.0
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Pad the spatial dimensions of ``x`` (``B C *spatial``) up to a multiple of ``multiple``.

    Args:
        x: batch-first, channel-first tensor.
        multiple: divisor per spatial axis (or one for all axes).
        mode: padding mode of :func:`torch.nn.functional.pad` (``"constant"``, ``"replicate"``, ...).
        value: fill value for ``mode="constant"``.

    Returns:
        The padded tensor and the ``(before, after)`` padding of every spatial axis, to be
        passed to :func:`crop_padding`.
    """
    spatial = x.shape[2:]
    multiples = ensure_tuple_rep(multiple, len(spatial))
    pads: list[tuple[int, int]] = []
    for size, m in zip(spatial, multiples, strict=True):
        extra = (-size) % m
        pads.append((extra // 2, extra - extra // 2))
    if _no_padding(pads):
        return x, pads
    # F.pad lists the last axis first
    flat: list[int] = []
    for before, after in reversed(pads):
        flat += [before, after]
    if mode == "constant":
        return F.pad(x, flat, mode="constant", value=value), pads
    return F.pad(x, flat, mode=mode), pads


def crop_padding(x: torch.Tensor, pads: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple` on a tensor of the padded spatial size.

    Args:
        x: tensor ``B C *spatial`` on the padded grid.
        pads: the ``(before, after)`` padding returned by :func:`pad_to_multiple`.
    """
    if _no_padding(pads):
        return x
    slices = [slice(None), slice(None)]
    for size, (before, after) in zip(x.shape[2:], pads, strict=True):
        slices.append(slice(before, size - after))
    return x[tuple(slices)]


def channels_last_format(ndim: int) -> torch.memory_format | None:
    """The channels-last memory format for ``ndim``-D tensors (5: NDHWC, 4: NHWC), else None."""
    return {5: torch.channels_last_3d, 4: torch.channels_last}.get(ndim)


def to_channels_last(network: nn.Module, enabled: bool = True) -> nn.Module:
    """Store the convolution weights of ``network`` channels-last (in place); return ``network``.

    On CPU, oneDNN runs 3-D convolutions markedly faster when the weights are channels-last
    (NDHWC): a training step of the hippocampus U-Net is about 15% faster on 2 cores, and
    inference over 96^3 windows about 1.25x. Convolutions return the weights' layout, so every
    activation after the first convolution is channels-last whatever the input's layout; to have
    the first one not mix layouts either, give it a channels-last input (:class:`ChannelsLast`
    does; for a single-channel input both layouts have the same strides, so that costs nothing).
    Results are the same up to float rounding, and state dicts
    load into networks of either layout. Copies of the network (``copy.deepcopy``, e.g. a
    weight average) keep the layout.

    Args:
        network: any module; its 4-D and 5-D parameters and buffers are converted.
        enabled: convert only when true (so that a config can pass e.g. "not on CUDA").
    """
    if enabled:
        for tensor in itertools.chain(network.parameters(), network.buffers()):
            layout = channels_last_format(tensor.ndim)
            if layout is not None:
                tensor.data = tensor.data.contiguous(memory_format=layout)
    return network


class ChannelsLast:
    """Call a network with channels-last (NDHWC / NHWC) activations and weights.

    On CPU, oneDNN's 3-D convolutions run markedly faster on channels-last tensors than on
    PyTorch's default contiguous layout (about 1.25x for a 3-D U-Net over 96^3 windows on 2 cores); the
    results are the same up to float rounding. The weights are converted in place by
    :func:`to_channels_last`, each input is converted to channels-last (as that function advises,
    so the first convolution does not mix layouts either) and the output is returned in the
    default layout, so callers see the layout they gave. The network's modules stay as built.

    Args:
        network: a module taking (N, C, *spatial) tensors.
    """

    def __init__(self, network: Any) -> None:
        self.network = to_channels_last(network)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        layout = channels_last_format(x.ndim)
        out = self.network(x.contiguous(memory_format=layout) if layout else x, *args, **kwargs)
        return out.contiguous() if isinstance(out, torch.Tensor) else out

    def __getattr__(self, name: str) -> Any:  # eval(), parameters(), ... of the wrapped network
        return getattr(self.__dict__["network"], name)


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _to_float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {key: _to_float32(value) for key, value in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_to_float32(value) for value in out)
    return out


class Autocast(nn.Module):
    """Run a network's forward under ``torch.autocast`` and hand back float32 outputs.

    Whatever calls the network (a sliding window that stitches the windows, an ensemble that
    averages softmax, a loss, an argmax) then computes in fp32 as it would without autocast; the
    network keeps its fp32 weights (training updates fp32 master weights). ``train()``, ``eval()``
    and ``parameters()`` reach the wrapped network as usual. :mod:`medseg.precision` decides when to
    use it (bf16 on CPUs with bf16 units).

    Args:
        network: the network (a module, or a callable wrapper such as :class:`ChannelsLast`).
        dtype: ``bf16`` or ``fp16``.
    """

    def __init__(self, network: Any, dtype: str = "bf16") -> None:
        super().__init__()
        if dtype not in _AUTOCAST_DTYPES:
            raise ValueError(f"Autocast dtype must be one of {', '.join(_AUTOCAST_DTYPES)}, got {dtype!r}.")
        self.network = network
        self.dtype = dtype

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type=x.device.type, dtype=_AUTOCAST_DTYPES[self.dtype]):
            out = self.network(x, *args, **kwargs)
        return _to_float32(out)

    def train(self, mode: bool = True) -> Autocast:
        super().train(mode)
        inner = self.__dict__.get("network")  # a plain callable (ChannelsLast) is no registered child
        if inner is not None and not isinstance(inner, nn.Module) and hasattr(inner, "train"):
            inner.train(mode)
        return self


class PadBatch(nn.Module):
    """Evaluate a network on CPU with at least ``min_batch`` samples per call.

    PyTorch sends a 3-D convolution of a single sample to its slow reference kernel
    (``slow_conv3d``) instead of oneDNN whenever ``N * C * D * H`` is small, which is every
    layer but the widest of a U-Net on hippocampus-sized inputs: one 40x56x40 window then takes
    about 18 ms, while a batch of two takes 11 ms. A sliding window over an image that fits in
    one window calls the network with one sample, so validation pays this on most cases. In
    eval mode on CPU this wrapper pads such a call to ``min_batch`` samples by repeating the
    last one and returns the outputs of the real samples: samples are independent in eval mode
    (instance norm, batch norm with running statistics), so the result is the same up to float
    rounding. Training mode and other devices call the network unchanged.

    Args:
        network: the network to evaluate.
        min_batch: the smallest batch to run on CPU.
    """

    def __init__(self, network: nn.Module, min_batch: int = 2) -> None:
        super().__init__()
        self.network = network
        self.min_batch = int(min_batch)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        n = int(x.shape[0])
        if self.training or x.device.type != "cpu" or n >= self.min_batch:
            return self.network(x, *args, **kwargs)
        filler = x[-1:].expand(self.min_batch - n, *x.shape[1:])
        out = self.network(torch.cat([x, filler]), *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out[:n]
        if isinstance(out, dict):
            return {key: value[:n] for key, value in out.items()}
        return type(out)(value[:n] for value in out)


class SegmentationModel(nn.Module):
    """Encoder -> decoder -> head network that accepts any input size.

    Subclasses set ``self.encoder``, ``self.decoder`` and ``self.head`` (as in
    segmentation_models_pytorch) or override :meth:`forward_padded`. :meth:`forward`
    pads the input to a multiple of ``size_divisor``, runs :meth:`forward_padded` and crops
    the logits back to the input size.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        size_divisor: total stride of the network, per axis or one for all axes.
        pad_mode: padding mode used to reach ``size_divisor`` (``"constant"`` pads zeros,
            which is the mean of a z-score normalised image).
    """

    encoder: nn.Module
    decoder: nn.Module
    head: nn.Module

    def __init__(
        self, spatial_dims: int, size_divisor: Sequence[int] | int, pad_mode: str = "constant"
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.spatial_dims = spatial_dims
        self.size_divisor: tuple[int, ...] = tuple(
            int(s) for s in ensure_tuple_rep(size_divisor, spatial_dims)
        )
        self.pad_mode = pad_mode

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of an input whose spatial size is a multiple of ``size_divisor``."""
        return self.head(self.decoder(self.encoder(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(
                f"{type(self).__name__} expects a {self.spatial_dims + 2}-D input (B, C, *spatial), "
                f"got shape {tuple(x.shape)}."
            )
        padded, pads = pad_to_multiple(x, self.size_divisor, mode=self.pad_mode)
        return crop_padding(self.forward_padded(padded), pads)
