"""What a plan must fit: CPU time or GPU memory, one strategy class per kind of budget.

The planner searches the same ladder of networks and patches for every budget; what differs is how
a candidate is judged (a CPU step must be fast enough for the epochs a wall-clock budget needs, a
GPU step must fit the memory), which networks are tried, how small a patch may get, how many
epochs are planned and how the rule reads. Each :class:`Budget` subclass answers those questions,
as nnU-Net's ``ExperimentPlanner`` subclasses change a planner's presets, so a new kind of budget
is one new class (it registers itself under its ``target`` name for ``medseg plan --target``).

A GPU plan of nnU-Net's residual-encoder U-Net (the GPU default) follows nnU-Net's ResEnc presets
(``nnUNetPlannerResEncM``, ``L``, ``XL``; Isensee et al., MICCAI 2024), one per class of GPU: the
preset is chosen from the GPU's memory (:func:`resenc_preset`), and like nnU-Net's presets it lets a
batch cover the whole dataset rather than 5 % of it; the memory the plan must fit is the GPU's own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from medseg.errors import ConfigError
from medseg.networks.registry import ResidualEncoderUNetSpec, network_spec
from medseg.plan.cost import StepTimer, estimate_step
from medseg.plan.values import rounded as _r

__all__ = [
    "BUDGETS",
    "CALIBRATED_MARGIN",
    "CPU_BUDGET_TRAINING_SHARE",
    "DEFAULT_CPU_MINUTES",
    "MAX_DATASET_FRACTION_PER_BATCH",
    "MIN_BATCH_SIZE",
    "MIN_EPOCHS",
    "REFERENCE_CPU_CORES",
    "REFERENCE_CPU_GFLOPS",
    "REFERENCE_GPU_MEMORY_GB",
    "RESENC_PRESETS",
    "Assessment",
    "Budget",
    "CpuBudget",
    "GpuBudget",
    "IMAGE_BATCH",
    "ResEncPreset",
    "Width",
    "cpu_cores",
    "make_budget",
    "resenc_preset",
]

MIN_BATCH_SIZE = 2
# nnU-Net v2: a batch holds at most 5 % of the dataset's voxels.
MAX_DATASET_FRACTION_PER_BATCH = 0.05
REFERENCE_GPU_MEMORY_GB = 8.0
GPU_RESERVED_BYTES = 1 << 30
GPU_BASE_FEATURES = 32
# nnU-Net trains 1000 epochs of 250 steps; a GPU plan keeps that number of steps.
GPU_TRAINING_STEPS = 250_000

# CPU cost model, calibrated on the measured hippocampus_unet3d recipe: its step (16-128 channels,
# one residual unit, 40 x 56 x 40, batch 2: 4.07 GFLOP forward + backward) takes about 50 ms on two
# cores (5.7 s per epoch of 104 steps with validation), i.e. about 100 GFLOP/s plus 10 ms of
# data augmentation, optimizer and EMA per step. Throughput is assumed to scale with the cores.
REFERENCE_CPU_GFLOPS = 100.0
REFERENCE_CPU_CORES = 2
CPU_STEP_OVERHEAD_S = 0.010
DEFAULT_CPU_MINUTES = 15.0
# A candidate the FLOP model, scaled by the last measured-to-predicted ratio, predicts to take more
# than this many times the allowed step is ruled out untimed; nearer ones are timed. The ratio varies
# with the network: on Kvasir-SEG dev at two threads, 1.85 for 8 base features at 224 x 224 but 1.2
# for 16 at 160 x 160, which the previous ratio then ruled out although its measured step fitted.
CALIBRATED_MARGIN = 1.5
# The recipe's validation Dice was 0.857 after 5 epochs, 0.88 after 25 and peaked at 60: a CPU plan
# must afford 60 epochs within the budget; 10 % of the budget goes to caching and validation.
MIN_EPOCHS = 60
CPU_BUDGET_TRAINING_SHARE = 0.9
# A CPU patch keeps at least half the median image shape along each axis.
CPU_MIN_COVERAGE = 0.5
# A 2-D network on volumes (hippocampus_unet2d's recipe): 32 slices per step.
SLICE_BATCH = 32
# A 2-D network on 2-D images (photographs): 8 per step. A small 2-D step spends much of its time in
# per-step work (optimizer, EMA, Python) that a larger batch shares: measured on one core, a 128 x 128
# step of batch 8 took 10.9 ms per image where batch 2 took 16.8 ms (8 base features; 19.1 against
# 30.9 ms with 16), and on Kvasir-SEG dev batch 8 reached fold-1 Dice 0.615 in 8 minutes.
IMAGE_BATCH = 8

# Why photographs get a 16-base rung with two blocks per level (Kvasir-SEG dev, test fold never looked at).
PHOTO_TWO_BLOCKS_NOTE = (
    "16 base features, two residual units per level (nnU-Net's two blocks at half its width): on Kvasir-SEG "
    "dev fold 1, 30 minutes on one core, it scored Dice 0.796 at 224 x 224 (104 epochs) where one unit per "
    "level scored 0.773 (151 epochs); photographs only, volumes keep the ladder their shipped plans were "
    "measured with"
)

BUDGETS: dict[str, type[Budget]] = {}


@dataclass(frozen=True)
class Width:
    """One rung of the network ladder: base width and blocks per level."""

    name: str
    base: int
    blocks: int
    note: str


NNUNET_WIDTH = Width(
    "nnU-Net width", GPU_BASE_FEATURES, 2, "nnU-Net's 32 base features, two blocks per level"
)
RESENC_WIDTH = Width(
    "nnU-Net ResEnc width",
    GPU_BASE_FEATURES,
    1,
    "32 base features at every ResEnc preset (a larger GPU buys a larger patch and batch, not a wider network)",
)


@dataclass(frozen=True)
class ResEncPreset:
    """One of nnU-Net's residual-encoder presets: the class of GPU it is made for.

    Attributes:
        name: ``M``, ``L`` or ``XL``.
        planner: nnU-Net's planner class of the preset.
        target_gb: the GPU memory nnU-Net's preset plans for.
        below_gb: the preset is chosen for GPUs with less memory than this.
        gpus: the GPUs nnU-Net names for it.
        max_dataset_fraction: the most of the dataset's voxels one batch may hold (nnU-Net's
            ``max_dataset_covered``; its default planner: 5 %).
    """

    name: str
    planner: str
    target_gb: float
    below_gb: float
    gpus: str
    max_dataset_fraction: float = 1.0

    def data(self) -> dict[str, Any]:
        """The preset as the plan records it."""
        return {
            "name": self.name,
            "nnunet_planner": self.planner,
            "target_gb": self.target_gb,
            "chosen_below_gb": None if math.isinf(self.below_gb) else self.below_gb,
            "gpus": self.gpus,
            "max_dataset_fraction": self.max_dataset_fraction,
        }


# nnU-Net v2's residual_encoder_unet_planners.py: M targets ~9-11 GB of VRAM, L ~24 GB, XL 40 GB.
RESENC_PRESETS = (
    ResEncPreset("M", "nnUNetPlannerResEncM", 8.0, 16.0, "RTX 2080 Ti, older Titans (9-11 GB)"),
    ResEncPreset("L", "nnUNetPlannerResEncL", 24.0, 32.0, "RTX 4090, Titan RTX, Quadro 6000 (24 GB)"),
    ResEncPreset("XL", "nnUNetPlannerResEncXL", 40.0, math.inf, "A100 40 GB, RTX 6000 Ada (40-48 GB)"),
)


def resenc_preset(gpu_memory_gb: float) -> ResEncPreset:
    """The ResEnc preset of a GPU: M below 16 GB, L below 32 GB, XL from 32 GB."""
    return next(preset for preset in RESENC_PRESETS if gpu_memory_gb < preset.below_gb)


def _presets_rule() -> str:
    """The preset rule, in words."""
    bands = []
    for preset in RESENC_PRESETS:
        band = f"< {preset.below_gb:g} GB" if not math.isinf(preset.below_gb) else "otherwise"
        bands.append(f"{band}: {preset.name} ({preset.planner}, {preset.target_gb:g} GB target)")
    return "; ".join(bands)


@dataclass(frozen=True)
class Assessment:
    """How one candidate (network, patch) fares against the budget.

    Attributes:
        fits: whether it fits.
        batch: the batch size it would train with.
        step: its training step's cost (:func:`medseg.plan.cost.estimate_step`).
        cost: what the plan records about it (seconds or memory against the budget).
    """

    fits: bool
    batch: int
    step: Mapping[str, float]
    cost: dict[str, Any]


@dataclass(frozen=True)
class Budget:
    """A compute budget; the recorded inputs are the same for every kind.

    Args:
        max_minutes: the CPU training budget (wall clock, whole training).
        gpu_memory_gb: the GPU memory budget (nnU-Net's reference: 8).
        cores: CPU cores the training will use.
        timer: measures candidates' step times (``medseg plan --measure``); None: the FLOP model only.
        network: the planned network's registry name (None: the kind's ``default_network``).
    """

    target: ClassVar[str]
    default_network: ClassVar[str] = "unet"
    max_minutes: float = DEFAULT_CPU_MINUTES
    gpu_memory_gb: float = REFERENCE_GPU_MEMORY_GB
    cores: int = REFERENCE_CPU_CORES
    timer: StepTimer | None = field(default=None, compare=False)
    network: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        BUDGETS[cls.target] = cls

    def __post_init__(self) -> None:
        if self.max_minutes <= 0 or self.gpu_memory_gb <= 0:
            raise ConfigError("the compute budget must be positive")
        object.__setattr__(self, "network", network_spec(self.network or self.default_network).name)

    @property
    def gflops(self) -> float:
        """The CPU throughput assumed for the cores (GFLOP/s)."""
        return REFERENCE_CPU_GFLOPS * self.cores / REFERENCE_CPU_CORES

    @property
    def seconds(self) -> float:
        return 60.0 * self.max_minutes

    @property
    def bytes(self) -> float:
        return self.gpu_memory_gb * 2**30

    def data(self) -> dict[str, Any]:
        """The budget's inputs as the plan records them (with what measured times depend on)."""
        measurement = {}
        if self.timer is not None:  # with the busiest load a measurement ran under (busy: re-plan when quiet)
            measurement = {
                "measurement": {**self.timer.context(), "load_per_core": round(self.timer.load, 2)}
            }
        return {
            "cores": self.cores,
            "gflops": self.gflops,
            "max_minutes": self.max_minutes,
            "gpu_memory_gb": self.gpu_memory_gb,
            **measurement,
        }

    def value(self) -> dict[str, Any]:
        """What the plan's ``compute`` value says of the budget besides the chosen candidate's cost."""
        return {"target": self.target}

    # -- what each kind decides -------------------------------------------------------------------

    ladder: ClassVar[tuple[Width, ...]]
    """The networks tried, widest first; the last one may shrink its patch."""
    min_coverage: ClassVar[float]
    """The smallest patch, as a share of the median image shape along each axis."""
    channels_last: ClassVar[bool]
    """Whether networks that run faster channels-last on this hardware train so."""

    def ladder_for(self, images: bool) -> tuple[Width, ...]:
        """The ladder searched for a plan: ``images`` for a 2-D network on 2-D images (photographs)."""
        return self.ladder

    def assess(
        self,
        config: Mapping[str, Any],
        patch: list[int],
        batch_cap: int,
        samples_per_epoch: int,
        slicing: bool,
        final: bool = False,
    ) -> Assessment:
        """Judge a network (``network_def``) at a padded patch against the budget.

        Args:
            config: the ``network_def``.
            patch: the padded training patch.
            batch_cap: the most samples per batch (5 % of the dataset's voxels).
            samples_per_epoch: samples an epoch draws (training cases, times slices per volume).
            slicing: a 2-D network on volumes.
            final: the candidate is taken whatever the verdict (the last rung's smallest patch).
        """
        raise NotImplementedError

    def batch_cap(self, dataset_voxels: float, patch_voxels: float, samples_per_epoch: int) -> int:
        """The most samples per batch: nnU-Net's 5 % of the dataset's voxels, at least ``MIN_BATCH_SIZE``.

        Args:
            dataset_voxels: the dataset's voxels (median image times the cases).
            patch_voxels: the padded patch's voxels.
            samples_per_epoch: samples an epoch draws.
        """
        return max(MIN_BATCH_SIZE, int(round(dataset_voxels * MAX_DATASET_FRACTION_PER_BATCH / patch_voxels)))

    def batch_cap_data(self, cap: int) -> dict[str, Any]:
        """The batch cap as the plan's ``batch_size`` data records it."""
        return {"cap_for_5_percent": cap}

    def exhausted(self, network: str) -> None:
        """Called when even the smallest patch of the last rung does not fit: raise, or return to
        accept it over budget."""
        raise NotImplementedError

    def rule(self) -> str:
        """The compute rule, in words."""
        raise NotImplementedError

    def batch_rule(self) -> str:
        """The batch-size rule, in words."""
        raise NotImplementedError

    def epochs(self, cost: Mapping[str, Any], steps_per_epoch: int) -> tuple[int, str]:
        """The planned epochs and their rule."""
        raise NotImplementedError


@dataclass(frozen=True)
class CpuBudget(Budget):
    """Time: ``MIN_EPOCHS`` epochs must fit the wall-clock budget, a step's time estimated from its
    FLOPs. Lighter networks are tried before a smaller patch; a patch keeps half the median shape."""

    target: ClassVar[str] = "cpu"
    ladder: ClassVar[tuple[Width, ...]] = (
        NNUNET_WIDTH,
        Width(
            "light",
            16,
            1,
            "16 base features, one residual unit per level: the measured CPU recipe of hippocampus_unet3d "
            "(fold-0 Dice 0.885 in 15 minutes on 2 cores; a 4.7 M-parameter network did no better)",
        ),
        Width("lighter", 8, 1, "8 base features, one residual unit per level"),
    )
    image_ladder: ClassVar[tuple[Width, ...]] = (
        NNUNET_WIDTH,
        Width("light, two blocks", 16, 2, PHOTO_TWO_BLOCKS_NOTE),
        *ladder[1:],
    )
    """For photographs: the CPU ladder with a 16-base rung of nnU-Net's two blocks per level, which
    photographs afford at the scale their planned views allow (:data:`PHOTO_TWO_BLOCKS_NOTE`). Volumes
    keep :attr:`ladder`: their shipped plans were measured with it."""
    min_coverage: ClassVar[float] = CPU_MIN_COVERAGE
    channels_last: ClassVar[bool] = True

    def ladder_for(self, images: bool) -> tuple[Width, ...]:
        return self.image_ladder if images else self.ladder

    def step_seconds(self, step: Mapping[str, float]) -> float:
        """A step's time: its FLOPs at the assumed throughput, plus the per-step overhead."""
        return step["gflop"] / self.gflops + CPU_STEP_OVERHEAD_S

    def assess(
        self,
        config: Mapping[str, Any],
        patch: list[int],
        batch_cap: int,
        samples_per_epoch: int,
        slicing: bool,
        final: bool = False,
    ) -> Assessment:
        batch = min(batch_cap, SLICE_BATCH) if slicing else MIN_BATCH_SIZE
        if len(patch) == 2 and not slicing:
            batch = max(MIN_BATCH_SIZE, min(batch_cap, IMAGE_BATCH))
        step = estimate_step(config, patch, batch)
        predicted = self.step_seconds(step)
        steps_per_epoch = math.ceil(samples_per_epoch / batch)
        limit = self.seconds * CPU_BUDGET_TRAINING_SHARE / (MIN_EPOCHS * steps_per_epoch)
        seconds, times = predicted, {}
        if self.timer is not None:
            seconds, times = self._measured(config, patch, batch, predicted, None if final else limit)
        cost = {
            "seconds_per_step": _r(seconds),
            **times,
            "seconds_per_step_allowed": _r(limit),
            "steps_per_epoch": steps_per_epoch,
        }
        return Assessment(seconds <= limit, batch, step, cost)

    def _measured(
        self, config: Mapping[str, Any], patch: list[int], batch: int, predicted: float, limit: float | None
    ) -> tuple[float, dict[str, float]]:
        """The step time that decides, and the times recorded: a candidate the FLOP model (scaled by
        the last measured-to-predicted ratio) predicts to fit, or to miss by less than
        :data:`CALIBRATED_MARGIN`, is timed, and one taken whatever its cost (``limit`` None); the
        others are ruled out by the scaled prediction, untimed."""
        assert self.timer is not None
        calibrated = predicted * self.timer.ratio
        times = {"seconds_per_step_predicted": _r(predicted)}
        if limit is not None and calibrated > limit * CALIBRATED_MARGIN:
            return calibrated, times
        spec = network_spec(str(config["_target_"]))
        channels_last = self.channels_last and spec.channels_last(int(config["spatial_dims"]))
        measured = self.timer.seconds(config, patch, batch, predicted, channels_last)
        return measured, {**times, "seconds_per_step_measured": _r(measured)}

    def exhausted(self, network: str) -> None:
        return None  # train the smallest patch for fewer epochs

    def rule(self) -> str:
        predicted = (
            f"FLOPs / {self.gflops:g} GFLOP/s + {CPU_STEP_OVERHEAD_S * 1000:g} ms ({REFERENCE_CPU_GFLOPS:g} GFLOP/s "
            f"on {REFERENCE_CPU_CORES} cores, calibrated on the measured hippocampus_unet3d step, scaled by the cores)"
        )
        if self.timer is None:
            how = f"a step takes {predicted}"
        else:
            how = (
                f"a step's time is measured on this machine: the fastest of {self.timer.steps} real training steps "
                "(forward, Dice-CE, backward, AdamW, after two warm-up steps) of each candidate the FLOP model "
                f"predicts to fit or to miss by less than {CALIBRATED_MARGIN:g}x, cached per machine, torch version, "
                f"threads and candidate; the model ({predicted}), scaled by the last measured-to-predicted ratio, only "
                f"orders candidates and rules out those it predicts to take more than {CALIBRATED_MARGIN:g}x the "
                "allowed step"
            )
        return (
            f"CPU time: {MIN_EPOCHS} epochs (where the hippocampus recipe's validation Dice peaked) must fit "
            f"{CPU_BUDGET_TRAINING_SHARE:.0%} of {self.max_minutes:g} minutes; {how}"
        )

    def batch_rule(self) -> str:
        return (
            f"CPU: {MIN_BATCH_SIZE} (a CPU step costs in proportion to the batch, so more, smaller steps "
            f"converge faster per second; nnU-Net's minimum), {SLICE_BATCH} slices for a 2-D network on volumes, "
            f"{IMAGE_BATCH} images for a 2-D network on 2-D images (a small 2-D step spends much of its time in "
            "per-step work that a larger batch shares: 10.9 against 16.8 ms per 128 x 128 image on one core); at "
            f"most {MAX_DATASET_FRACTION_PER_BATCH:.0%} of the dataset's voxels per batch"
        )

    def epochs(self, cost: Mapping[str, Any], steps_per_epoch: int) -> tuple[int, str]:
        step_s = float(cost["seconds_per_step"])
        epochs = max(1, int(self.seconds * CPU_BUDGET_TRAINING_SHARE / (step_s * steps_per_epoch)))
        rule = (
            f"as many epochs as fit {CPU_BUDGET_TRAINING_SHARE:.0%} of the {self.max_minutes:g}-minute budget"
        )
        if epochs < MIN_EPOCHS:
            rule += (
                f" (fewer than the {MIN_EPOCHS} a CPU plan aims for: even the lightest network at half the median "
                "image shape is too slow for this budget; raise --max-minutes for a better model)"
            )
        return epochs, rule


@dataclass(frozen=True)
class GpuBudget(Budget):
    """Memory: a step of batch ``MIN_BATCH_SIZE`` must fit the GPU (nnU-Net's 8 GB reference); the
    batch then grows into the memory left. nnU-Net's width only; the patch may shrink to any size.

    The residual-encoder U-Net (the default network of a GPU plan) is planned with the ResEnc preset
    of the GPU's memory (:func:`resenc_preset`); other networks with nnU-Net's default planner."""

    target: ClassVar[str] = "gpu"
    default_network: ClassVar[str] = ResidualEncoderUNetSpec.name
    min_coverage: ClassVar[float] = 0.0
    channels_last: ClassVar[bool] = False

    @property
    def preset(self) -> ResEncPreset | None:
        """The ResEnc preset of this GPU, for the residual-encoder U-Net; None for other networks."""
        if self.network != ResidualEncoderUNetSpec.name:
            return None
        return resenc_preset(self.gpu_memory_gb)

    @property
    def ladder(self) -> tuple[Width, ...]:
        """The ResEnc width under a preset, else nnU-Net's plain width."""
        return (RESENC_WIDTH,) if self.preset is not None else (NNUNET_WIDTH,)

    def data(self) -> dict[str, Any]:
        preset = self.preset
        return {**super().data(), **({"preset": preset.data()} if preset is not None else {})}

    def value(self) -> dict[str, Any]:
        preset = self.preset
        return {**super().value(), **({"preset": preset.name} if preset is not None else {})}

    def batch_cap(self, dataset_voxels: float, patch_voxels: float, samples_per_epoch: int) -> int:
        preset = self.preset
        if preset is None:
            return super().batch_cap(dataset_voxels, patch_voxels, samples_per_epoch)
        covered = int(round(dataset_voxels * preset.max_dataset_fraction / patch_voxels))
        return max(MIN_BATCH_SIZE, min(covered, samples_per_epoch))

    def batch_cap_data(self, cap: int) -> dict[str, Any]:
        preset = self.preset
        if preset is None:
            return super().batch_cap_data(cap)
        return {"cap": cap, "max_dataset_fraction": preset.max_dataset_fraction}

    @staticmethod
    def step_bytes(step: Mapping[str, float], batch_size: int, per_sample: bool = False) -> float:
        """A training step's memory: saved activations, plus weights, gradients and two AdamW moments,
        plus the CUDA context (``per_sample``: the activations of one sample only)."""
        activations = step["saved_mib"] * 2**20
        if per_sample:
            return activations / batch_size
        return activations + 16 * step["parameters"] + GPU_RESERVED_BYTES

    def assess(
        self,
        config: Mapping[str, Any],
        patch: list[int],
        batch_cap: int,
        samples_per_epoch: int,
        slicing: bool,
        final: bool = False,
    ) -> Assessment:
        step = estimate_step(config, patch, MIN_BATCH_SIZE)
        need = self.step_bytes(step, MIN_BATCH_SIZE)
        per_sample = self.step_bytes(step, MIN_BATCH_SIZE, per_sample=True)
        fixed = need - MIN_BATCH_SIZE * per_sample
        batch = int(min(batch_cap, max(MIN_BATCH_SIZE, (self.bytes - fixed) // per_sample)))
        cost = {
            "memory_gib": _r(need / 2**30),
            "memory_gib_at_batch": _r((fixed + batch * per_sample) / 2**30),
            "memory_budget_gib": _r(self.bytes / 2**30),
        }
        return Assessment(need <= self.bytes, batch, step, cost)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.timer is not None:
            raise ConfigError(
                "a GPU plan is sized by memory; --measure times CPU training steps, plan for cpu"
            )

    def exhausted(self, network: str) -> None:
        raise ConfigError(
            f"no {network} patch fits {self.bytes / 2**30:g} GiB of GPU memory even at the "
            "smallest size; choose a lighter --network or plan for a larger GPU"
        )

    def rule(self) -> str:
        rule = (
            f"GPU memory: a training step of batch {MIN_BATCH_SIZE} must fit {self.gpu_memory_gb:g} GB (nnU-Net's "
            "8 GB reference); estimate = tensors autograd saves (counted on the meta device, float32) + 16 bytes "
            "per parameter (weights, gradients, AdamW moments) + 1 GiB CUDA context and workspaces"
        )
        preset = self.preset
        if preset is None:
            return rule
        return (
            f"{rule}; nnU-Net's ResEnc preset by GPU memory ({_presets_rule()}): {self.gpu_memory_gb:g} GB gets "
            f"{preset.name} ({preset.gpus}); the preset's network is the same at every size, so a larger GPU "
            "keeps more of the median image in the patch (the patch shrinks from the median shape only until "
            "it fits) and a larger batch; memory_gib_at_batch is the estimate at the planned batch"
        )

    def batch_rule(self) -> str:
        preset = self.preset
        if preset is None:
            return (
                f"as many samples as fit the memory budget, at least {MIN_BATCH_SIZE}, at most "
                f"{MAX_DATASET_FRACTION_PER_BATCH:.0%} of the dataset's voxels per batch (nnU-Net v2)"
            )
        return (
            f"as many samples as fit the memory budget, at least {MIN_BATCH_SIZE}, at most "
            f"{preset.max_dataset_fraction:.0%} of the dataset's voxels per batch (nnU-Net's ResEnc presets: "
            "max_dataset_covered 1) and at most the samples an epoch draws (a medseg epoch is one pass over "
            "the training cases)"
        )

    def epochs(self, cost: Mapping[str, Any], steps_per_epoch: int) -> tuple[int, str]:
        epochs = max(MIN_EPOCHS, math.ceil(GPU_TRAINING_STEPS / steps_per_epoch))
        return epochs, f"nnU-Net's {GPU_TRAINING_STEPS} training steps (1000 epochs of 250)"


def cpu_cores() -> int:
    """The cores this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def make_budget(
    target: str,
    max_minutes: float = DEFAULT_CPU_MINUTES,
    gpu_memory_gb: float = REFERENCE_GPU_MEMORY_GB,
    cores: int | None = None,
    timer: StepTimer | None = None,
    network: str | None = None,
) -> Budget:
    """The budget of kind ``target`` (one of :data:`BUDGETS`); ``timer`` measures step times.

    ``network`` is the planned network (None: the kind's default, ``resencunet`` for a GPU).

    Raises:
        ConfigError: an unknown target or network, or a budget that is not positive.
    """
    if target not in BUDGETS:
        raise ConfigError(f"unknown target {target!r}; choose {' or '.join(BUDGETS)}")
    return BUDGETS[target](
        max_minutes=max_minutes,
        gpu_memory_gb=gpu_memory_gb,
        cores=cpu_cores() if cores is None else int(cores),
        timer=timer,
        network=network,
    )
