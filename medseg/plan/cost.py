"""What one training step of a planned network costs: counted without running it, and measured.

The planner orders its candidates by the count: the floating-point operations of a forward and
backward pass and the tensors autograd keeps for the backward pass, counted on PyTorch's ``meta``
device (shapes only: nothing is allocated or computed, so a 3-D network at a large patch costs
milliseconds to count). A FLOP count predicts a CPU step's time only roughly (data-layout, memory
traffic and per-operator overheads are not FLOPs; on 2 cores the model predicted 0.05 s where a
hippocampus step took 0.2 s), so ``medseg plan --measure`` times a few real training steps of the
candidates it would choose (:class:`StepTimer`), on this machine, once: the times are cached per
machine, torch version, threads and candidate.

On a CPU with bf16 units (:func:`medseg.precision.bf16_units`) the timer also times the chosen
candidate's step under bf16 autocast, with fp32 master weights as ``medseg train`` runs it
(:meth:`StepTimer.training_precision`): whether bf16 pays off in training depends on the CPU (AMX
multiplies bf16 matrices several times faster than fp32; AVX-512-BF16 alone speeds the forward up
but not all of the backward pass), so the plan records both times and trains in bf16 only where it
measured at least :data:`BF16_TRAINING_MIN_SPEEDUP` times faster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.io.atomic import atomic_write_json
from medseg.networks.registry import network_spec
from medseg.plan.values import rounded as _rounded
from medseg.precision import BF16_TRAINING_MIN_SPEEDUP

__all__ = [
    "BF16_TRAINING_MIN_SPEEDUP",
    "BUSY_LOAD_PER_CORE",
    "MEASURED_ITEMS",
    "MEASURED_STEPS",
    "WARMUP_STEPS",
    "StepTimer",
    "build_network",
    "estimate_step",
    "load_per_core",
    "machine_id",
    "measure_step",
]

logger = logging.getLogger(__name__)

# Timed steps per candidate, after WARMUP_STEPS untimed ones (oneDNN creates its kernels for new
# shapes during the first steps). The fastest of five is the step's cost on a quiet machine: on a
# shared one other processes only ever add time (with two OpenMP threads and a third busy process a
# step can take 20x its quiet time), and a median of three taken under such load once made 80 x 80
# patches look slower than 160 x 160. Five small 2-D or 3-D steps cost about a second.
MEASURED_STEPS = 5
# Items the data pipeline's random transforms are timed on (their mean: the transforms are random).
MEASURED_ITEMS = 16
WARMUP_STEPS = 2
STEP_CACHE_FILE = "step_times.json"
# A machine whose load average per usable core exceeds this is busy: its measured steps are slower
# than the quiet machine's, so a time cached from a busy machine is measured again once the machine
# is quieter, and the faster of the two is kept.
BUSY_LOAD_PER_CORE = 1.0


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


def machine_id(device: str = "cpu") -> str:
    """The hardware a measured step time belongs to: the CPU model and the cores this process may
    use, or the GPU's name."""
    if device.startswith("cuda"):
        import torch

        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} x{cores}"


def load_per_core() -> float:
    """The one-minute load average per core this process may use (0 where the OS does not say)."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return load / max(1, cores)


def measure_step(
    config: Mapping[str, Any],
    patch_size: Sequence[int],
    batch_size: int,
    device: str = "cpu",
    steps: int = MEASURED_STEPS,
    channels_last: bool = False,
    precision: str = "fp32",
) -> float:
    """Seconds per training step of a ``network_def``, measured: the fastest of ``steps`` real
    forward + Dice-CE + backward + AdamW steps on random data, after :data:`WARMUP_STEPS` untimed ones.

    Args:
        config: a ``network_def``.
        patch_size: the training patch.
        batch_size: samples per step.
        device: ``cpu`` or a CUDA device.
        steps: timed steps.
        channels_last: store the weights channels-last, as a CPU training of this network does.
        precision: ``fp32``, or ``bf16`` to run the forward under bf16 autocast with fp32 weights
            (:class:`medseg.networks.Autocast`, as ``medseg train --precision bf16`` does).
    """
    import torch
    from monai.losses import DiceCELoss

    from medseg.networks.base import Autocast, to_channels_last

    generator = torch.Generator().manual_seed(0)
    network = to_channels_last(build_network(config), channels_last).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    forward = Autocast(network, precision) if precision != "fp32" else network
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    image = torch.randn((batch_size, config["in_channels"], *patch_size), generator=generator).to(device)
    label = torch.randint(0, config["out_channels"], (batch_size, 1, *patch_size), generator=generator).to(
        device
    )

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_function(forward(image), label).backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    for _ in range(WARMUP_STEPS):  # oneDNN and cuDNN pick their kernels, the optimizer allocates its state
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_transforms(
    config: Mapping[str, Any], key: str, shape: Sequence[int], channels: int, items: int = MEASURED_ITEMS
) -> float:
    """Seconds the random transforms of a bundle config take per cached item, measured: the mean over
    ``items`` synthetic items (after one untimed item), each a copy of a float image and a two-class
    label, as a ``CacheDataset`` hands its cached items to the random transforms.

    The mean, not the fastest: the transforms are random (an affine with probability 0.3 costs on
    about a third of the items), and the mean is what a training's steps add up to.

    Args:
        config: a rendered ``train.json`` (its ``@`` references resolve in it).
        key: the transforms' key, e.g. ``train#random_transforms``.
        shape: the cached image's spatial shape (what the deterministic transforms give).
        channels: image channels.
        items: timed items.
    """
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    transform = Compose(ConfigParser(dict(config)).get_parsed_content(key))
    transform.set_random_state(seed=0)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((channels, *shape), generator=generator)
    label = (torch.rand((1, *shape), generator=generator) > 0.7).to(torch.uint8)

    def item() -> None:
        transform({"image": image.clone(), "label": label.clone()})

    item()  # first-call costs: the affine's grid buffers, lazy imports
    start = time.perf_counter()
    for _ in range(items):
        item()
    return (time.perf_counter() - start) / items


@dataclass
class StepTimer:
    """Measured step times of planned candidates (and of the chosen one's data pipeline,
    :meth:`transform_seconds`), cached per machine, torch version, threads and candidate in a JSON
    file, so that planning again on the same machine measures nothing.

    It also keeps the ratio of measured to predicted time of its last measurement, with which the
    planner calibrates the FLOP model's prediction of the next candidate before deciding to time it.

    Each cached time keeps the machine's load per core when it was measured: a time measured on a busy
    machine (load above :data:`BUSY_LOAD_PER_CORE`) is measured again when the machine is quieter, and
    the faster of the two kept, so that the cache tends to the quiet machine's times; :attr:`load` is
    the highest load under which any time this timer gave was measured (the plan records it).

    Args:
        cache_file: the cache (default: ``step_times.json`` in :func:`medseg.paths.cache_dir`).
        device: where the steps run.
        steps: timed steps per candidate.
        cpuinfo: where the CPU's flags and model are read (:mod:`medseg.precision`; a test fakes a CPU).
    """

    cache_file: Path | None = None
    device: str = "cpu"
    steps: int = MEASURED_STEPS
    ratio: float = 1.0
    measured: int = 0
    cached: int = 0
    load: float = 0.0
    cpuinfo: str = "/proc/cpuinfo"

    def __post_init__(self) -> None:
        if self.cache_file is None:
            from medseg.paths import cache_dir

            self.cache_file = cache_dir() / STEP_CACHE_FILE

    def context(self) -> dict[str, Any]:
        """What a measurement depends on besides the candidate (recorded in the plan)."""
        import torch

        return {
            "machine": machine_id(self.device),
            "device": self.device,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "steps": self.steps,
        }

    def _key(
        self,
        config: Mapping[str, Any],
        patch: Sequence[int],
        batch: int,
        channels_last: bool,
        precision: str = "fp32",
    ) -> str:
        reduced = {"precision": precision} if precision != "fp32" else {}  # fp32 keys stay as they were
        candidate = {
            **reduced,
            **self.context(),
            "config": dict(config),
            "patch": list(patch),
            "batch": batch,
            "channels_last": channels_last,
        }
        return hashlib.sha256(json.dumps(candidate, sort_keys=True).encode()).hexdigest()

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(Path(self.cache_file).read_text())
        except (OSError, ValueError):  # no cache yet, or a damaged one: measure again
            return {}

    def _cached(self, key: str, measure: Callable[[], float], describe: Mapping[str, Any]) -> float:
        """A time from the cache, or measured (and cached with ``describe``): measured again when it
        was measured on a busy machine that is quieter now, the faster of the two kept."""
        cache = self._read()
        load = load_per_core() if self.device == "cpu" else 0.0
        entry = cache.get(key)
        if entry is not None and not _measured_busier(entry, load):
            self.cached += 1
            self.load = max(self.load, float(entry.get("load", 0.0)))
            return float(entry["seconds"])
        seconds = measure()
        self.measured += 1
        if load > BUSY_LOAD_PER_CORE:
            logger.warning(
                "this machine is busy (load %.1f per core): measured step times are slower than on a quiet "
                "machine; plan again when it is quiet (the faster time is then kept)",
                load,
            )
        if entry is not None and float(entry["seconds"]) <= seconds:  # the busier time was still faster
            seconds, load = float(entry["seconds"]), float(entry.get("load", 0.0))
        self.load = max(self.load, load)
        cache[key] = {"seconds": seconds, "load": round(load, 2), **describe}
        try:
            Path(self.cache_file).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(Path(self.cache_file), cache)
        except OSError as exc:  # a read-only home: the plan is still right, only not cached
            logger.warning(
                "cannot write the step-time cache %s (%s); measuring again next time", self.cache_file, exc
            )
        return seconds

    def transform_seconds(
        self, config: Mapping[str, Any], key: str, shape: Sequence[int], channels: int
    ) -> float:
        """Seconds a bundle config's random transforms take per cached image
        (:func:`measure_transforms`), cached like the steps: per machine, torch version, threads, the
        transforms (with the config entries they reference), shape and channels."""
        from monai.bundle import ConfigParser

        transforms = ConfigParser(dict(config)).get(key)
        referenced = sorted(set(re.findall(r"@(\w+)", json.dumps(transforms))))
        candidate = {
            **self.context(),
            "transforms": transforms,
            "referenced": {name: config.get(name) for name in referenced},
            "shape": list(shape),
            "channels": channels,
        }
        digest = hashlib.sha256(json.dumps(candidate, sort_keys=True, default=str).encode()).hexdigest()
        return self._cached(
            digest,
            lambda: measure_transforms(config, key, shape, channels),
            {"transforms": key, "shape": list(shape), "channels": channels},
        )

    def seconds(
        self,
        config: Mapping[str, Any],
        patch: Sequence[int],
        batch: int,
        predicted: float,
        channels_last: bool = False,
        precision: str = "fp32",
    ) -> float:
        """The measured seconds per step of a candidate (from the cache when it holds it).

        Args:
            config: the candidate's ``network_def``.
            patch: its padded patch.
            batch: its batch size.
            predicted: the FLOP model's seconds per step, to calibrate the next prediction.
            channels_last: whether its training stores weights channels-last.
            precision: ``fp32``, or ``bf16`` for its step under bf16 autocast (a bf16 time does not
                calibrate the FLOP model, which predicts fp32 steps).
        """
        key = self._key(config, patch, batch, channels_last, precision)
        seconds = self._cached(
            key,
            lambda: measure_step(config, patch, batch, self.device, self.steps, channels_last, precision),
            {
                "patch": list(patch),
                "batch": batch,
                "target": config["_target_"],
                **({"precision": precision} if precision != "fp32" else {}),
            },
        )
        if precision == "fp32":
            self.ratio = seconds / max(predicted, 1e-9)
        return seconds

    def training_precision(
        self,
        config: Mapping[str, Any],
        patch: Sequence[int],
        batch: int,
        fp32_seconds: float,
        channels_last: bool = False,
    ) -> dict[str, Any]:
        """The training precision of a chosen candidate, decided by measurement.

        On a CPU with bf16 units (``amx_bf16`` or ``avx512_bf16`` in :attr:`cpuinfo`) the candidate's
        step is timed under bf16 autocast with fp32 master weights; bf16 is chosen when
        ``fp32_seconds`` is at least :data:`BF16_TRAINING_MIN_SPEEDUP` times the bf16 time. Without
        bf16 units (bf16 would be emulated, slower) or on a GPU (the bundles' own fp16 AMP) nothing is
        timed and the plan records fp32.

        Args:
            config: the candidate's ``network_def``.
            patch: its padded patch.
            batch: its batch size.
            fp32_seconds: its measured fp32 step (:meth:`seconds`).
            channels_last: whether its training stores weights channels-last.

        Returns:
            ``{"value": "bf16" | "fp32", "rule", "cpu", "bf16_units", "seconds_per_step_fp32",
            "seconds_per_step_bf16" (None when not timed), "bf16_speedup" (None when not timed)}``.
        """
        from medseg.precision import BF16_FLAGS, bf16_units, cpu_flags, cpu_model

        units = bf16_units(cpu_flags(self.cpuinfo))
        record: dict[str, Any] = {
            "cpu": cpu_model(self.cpuinfo),
            "bf16_units": units,
            "seconds_per_step_fp32": _rounded(fp32_seconds),
            "seconds_per_step_bf16": None,
            "bf16_speedup": None,
        }
        rule = (
            f"bf16 autocast with fp32 master weights where the CPU has bf16 units ({' or '.join(BF16_FLAGS)}) "
            f"and a measured bf16 training step is at least {BF16_TRAINING_MIN_SPEEDUP:g}x as fast as the fp32 "
            "one, else fp32"
        )
        if not self.device.startswith("cpu"):
            return {"value": "fp32", "rule": f"{rule}; a GPU trains with its own AMP: not timed", **record}
        if not units:
            return {
                "value": "fp32",
                "rule": f"{rule}; this CPU has no bf16 units (bf16 would be emulated, slower): not timed",
                **record,
            }
        bf16 = self.seconds(config, patch, batch, fp32_seconds, channels_last, precision="bf16")
        speedup = fp32_seconds / max(bf16, 1e-9)
        chosen = "bf16" if speedup >= BF16_TRAINING_MIN_SPEEDUP else "fp32"
        record.update(seconds_per_step_bf16=_rounded(bf16), bf16_speedup=_rounded(speedup, 3))
        return {
            "value": chosen,
            "rule": f"{rule}; measured on this CPU ({', '.join(units)}): bf16 {speedup:.2f}x of fp32, so {chosen}",
            **record,
        }


def _measured_busier(entry: Mapping[str, Any], load: float) -> bool:
    """Whether a cached time was measured on a busy machine that is quieter now (measure it again)."""
    then = float(entry.get("load", 0.0))
    return then > BUSY_LOAD_PER_CORE and load < then
