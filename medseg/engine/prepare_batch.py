"""Batch preparation for MONAI's ``SupervisedTrainer``."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import default_prepare_batch

__all__ = ["prepare_plain_batch"]


def _plain(value: Any) -> Any:
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def prepare_plain_batch(
    batchdata: dict[str, Any],
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MONAI's ``default_prepare_batch``, returning plain tensors instead of ``MetaTensor``.

    Training needs no image metadata, but a ``MetaTensor`` input makes every operation of the
    network's forward and backward pass go through MONAI's ``__torch_function__`` and copy
    metadata: on CPU that costs a sizeable share of each iteration for small networks. The
    batch itself (``engine.state.batch``) keeps its metadata for handlers that log file names.
    Use as ``SupervisedTrainer(prepare_batch=prepare_plain_batch)``.
    """
    prepared = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    return tuple(_plain(item) for item in prepared)  # type: ignore[return-value]
