"""What one training step of a planned network costs, counted without running it.

The planner orders and sizes its candidates by this count: the floating-point operations of a
forward and backward pass and the tensors autograd keeps for the backward pass, counted on PyTorch's
``meta`` device (shapes only: nothing is allocated or computed, so a 3-D network at a large patch
costs milliseconds to count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medseg.networks.registry import network_spec

__all__ = ["build_network", "estimate_step"]


def build_network(config: Mapping[str, Any]) -> Any:
    """The network of a ``network_def`` (``_target_`` and constructor arguments), on the current device."""
    kwargs = {k: v for k, v in config.items() if k != "_target_"}
    return network_spec(str(config["_target_"])).network_class()(**kwargs)


def estimate_step(config: Mapping[str, Any], patch_size: Sequence[int], batch_size: int) -> dict[str, float]:
    """Cost of one training step, counted on PyTorch's ``meta`` device (nothing is computed).

    Args:
        config: a ``network_def``.
        patch_size: the training patch.
        batch_size: samples per step.

    Returns:
        ``{"gflop": forward + backward floating-point operations (1e9), "saved_mib": tensors autograd
        keeps for the backward pass (MiB, float32), "parameters": count}``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    with torch.device("meta"):
        network = build_network(config)
        x = torch.empty((batch_size, config["in_channels"], *patch_size))
    counter = FlopCounterMode(display=False)
    with counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        network(x).sum().backward()
    return {
        "gflop": counter.get_total_flops() / 1e9,
        "saved_mib": saved[0] / 2**20,
        "parameters": float(sum(p.numel() for p in network.parameters())),
    }
