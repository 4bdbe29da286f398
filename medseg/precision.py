"""Numeric precision of the network: fp32, or bf16 autocast on CPUs that have bf16 units.

Intel Xeons with AMX (``amx_bf16``) and CPUs with AVX-512-BF16 (``avx512_bf16``: Intel Cooper Lake
and later, AMD Zen 4 and later) multiply bf16 matrices in hardware; there oneDNN runs a 3-D U-Net's
convolutions under ``torch.autocast("cpu", dtype=torch.bfloat16)`` about 1.8x (AVX-512-BF16, AMD
EPYC Zen 4) to 2.3x (AMX) faster than in fp32. Elsewhere bf16 is emulated and slower, so ``auto``
uses it only where ``/proc/cpuinfo`` lists one of those flags (:func:`resolve_precision`). On CUDA,
``auto`` keeps the bundles' own choice, fp16 AMP.

Only the network runs in reduced precision: :class:`medseg.networks.Autocast` wraps it, runs its
forward under autocast and returns float32, so everything around it (sliding-window stitching, the softmax
average of an ensemble's members, flip TTA, argmax, losses and metrics) stays fp32, and the weights
stay fp32 (training keeps fp32 master weights; bf16 needs no gradient scaler). Bundles are not
edited: medseg wraps the networks their configs name (:func:`precision_overrides`).

Training gains less than inference on CPUs without AMX (the backward pass has more operators that
bf16 does not speed up), so for training ``auto`` follows the plan: ``medseg plan --measure`` times
the chosen network's training step in both precisions and records bf16 only where it was at least
:data:`BF16_TRAINING_MIN_SPEEDUP` times faster (``training.precision`` in ``plans/plan.json``).

``medseg serve`` passes its ``--precision`` to the inference code in the MONAI Label venv as the
environment variable :data:`PRECISION_ENV` (read by :func:`resolve_precision` when no precision is
given).

This module imports torch only when it runs a network, so the command line can build its parser
(:func:`add_precision_argument`) without the seconds that importing torch takes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError

__all__ = [
    "PRECISIONS",
    "PRECISION_ENV",
    "BF16_FLAGS",
    "BF16_TRAINING_MIN_SPEEDUP",
    "Precision",
    "add_precision_argument",
    "cpu_flags",
    "cpu_model",
    "bf16_units",
    "resolve_precision",
    "autocast",
    "with_precision",
    "precision_overrides",
]

logger = logging.getLogger(__name__)

# what a user may ask for (``--precision``)
PRECISIONS = ("auto", "fp32", "bf16")
# the environment variable ``medseg serve`` sets for the inference code (same values as PRECISIONS)
PRECISION_ENV = "MEDSEG_PRECISION"
# /proc/cpuinfo flags of hardware bf16 matrix units, best first
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# A plan trains in bf16 only when its measured bf16 training step is at least this much faster than
# fp32 (medseg.plan.cost): below 10 % the gain is within what a shared machine's load moves a
# measurement, and fp32 is the precision every shipped figure was trained in.
BF16_TRAINING_MIN_SPEEDUP = 1.1


def _cpuinfo_field(name: str, cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The value of the first ``name : value`` line of ``cpuinfo`` ('' when absent or unreadable)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:  # not Linux
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no ``/proc/cpuinfo``)."""
    return frozenset(_cpuinfo_field("flags", cpuinfo).split())


def cpu_model(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's model name, family and model numbers, e.g. ``AMD EPYC (family 25, model 17)``."""
    name = _cpuinfo_field("model name", cpuinfo) or "unknown CPU"
    family, model = _cpuinfo_field("cpu family", cpuinfo), _cpuinfo_field("model", cpuinfo)
    return f"{name} (family {family}, model {model})" if family and model else name


def bf16_units(flags: frozenset[str] | None = None) -> list[str]:
    """Which of :data:`BF16_FLAGS` the CPU has (``[]``: bf16 would be emulated, slower than fp32).

    Args:
        flags: the CPU flags; default :func:`cpu_flags`.
    """
    flags = cpu_flags() if flags is None else flags
    return [flag for flag in BF16_FLAGS if flag in flags]


@dataclass(frozen=True)
class Precision:
    """The precision a run uses, and why (recorded in reports, metrics and training records).

    Attributes:
        requested: what was asked for: ``auto``, ``fp32`` or ``bf16``.
        dtype: what the network runs in: ``fp32``, ``bf16`` or ``fp16`` (CUDA AMP).
        device: the device type, ``cpu`` or ``cuda``.
        reason: one line: the CPU flags or the rule that decided.
    """

    requested: str
    dtype: str
    device: str
    reason: str

    @property
    def reduced(self) -> bool:
        """Whether the network runs under autocast (anything but fp32)."""
        return self.dtype != "fp32"

    @property
    def torch_dtype(self) -> Any:
        """The autocast dtype (``torch.float32`` for fp32)."""
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype, torch.float32)

    def as_dict(self) -> dict[str, str]:
        """The record written to ``report.json`` / ``metrics.json`` / the training result."""
        return asdict(self)


def resolve_precision(
    precision: str | None = None,
    device: Any = "cpu",
    flags: frozenset[str] | None = None,
    training: bool = False,
    planned: Mapping[str, Any] | None = None,
    model: str | None = None,
) -> Precision:
    """Decide the precision of a run.

    ``auto`` is bf16 on a CPU with AMX or AVX-512-BF16 (:func:`bf16_units`), fp32 on other CPUs,
    and fp16 AMP on CUDA (the bundles' ``amp``). For training on a CPU with bf16 units, ``auto``
    follows the plan's measurement (``planned``: ``medseg plan --measure`` timed the network's
    training step in both precisions on this CPU model and chose bf16 only when it was at least 10 %
    faster, :meth:`medseg.plan.cost.StepTimer.training_precision`); without one, training needs AMX:
    with AVX-512-BF16 alone the backward pass gains less (a training step measured 0.91-1.31x on AMD
    EPYC Zen 4, ``benchmarks/precision.py``), while inference is 1.5-2.9x faster. A CPU without bf16
    units trains in fp32 whatever the plan says. ``bf16`` asked for on a CPU without bf16 units is
    honoured (bf16 is then emulated and slower) with a warning.

    Args:
        precision: ``auto``, ``fp32`` or ``bf16``; None reads :data:`PRECISION_ENV` (default ``auto``).
        device: where the network runs (a ``torch.device`` or its name).
        flags: the CPU flags; default :func:`cpu_flags`.
        training: the precision of a training run (forward and backward), not of inference.
        planned: for training, the plan's measured choice: ``plans/plan.json``'s ``training.precision``
            value (``"value"``) with its data (``"cpu"``, ``"bf16_speedup"``, ...); it counts only
            when measured on this CPU model.
        model: this CPU's model (default :func:`cpu_model`), compared with the plan's.

    Raises:
        ConfigError: an unknown precision (``param="precision"``).
    """
    if precision is None:
        precision = os.environ.get(PRECISION_ENV, "").strip() or "auto"
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise ConfigError(
            f"precision {precision!r} is not one of {', '.join(PRECISIONS)} (auto: bf16 where the CPU "
            f"has bf16 units, else fp32)",
            param="precision",
        )
    kind = str(getattr(device, "type", device)).split(":")[0]
    if precision == "fp32":
        return Precision(precision, "fp32", kind, "asked for")
    if kind == "cuda":
        if precision == "bf16":
            return Precision(precision, "bf16", kind, "asked for")
        return Precision(precision, "fp16", kind, "CUDA: automatic mixed precision (fp16)")
    units = bf16_units(flags)
    if precision == "bf16":
        if not units:
            logger.warning(
                "precision bf16: this CPU has no bf16 units (%s); bf16 is emulated and slower than fp32",
                " or ".join(BF16_FLAGS),
            )
        return Precision(precision, "bf16", kind, "asked for" + ("" if units else "; no bf16 units"))
    if training and units and planned and planned.get("value") in ("bf16", "fp32"):
        measured = _planned_training(precision, kind, units, planned, model)
        if measured is not None:
            return measured
    if training and units and "amx_bf16" not in units:
        return Precision(
            precision,
            "fp32",
            kind,
            f"CPU has {', '.join(units)} but no AMX: bf16 training is not faster"
            + _unmeasured_note(planned, model),
        )
    if units:
        return Precision(precision, "bf16", kind, f"CPU has {', '.join(units)}")
    note = ""
    if training and planned and planned.get("value") == "bf16":
        note = (
            f"; the plan chose bf16 on {planned.get('cpu', 'another CPU')}, but here bf16 would be emulated"
        )
    return Precision(precision, "fp32", kind, f"CPU has none of {', '.join(BF16_FLAGS)}{note}")


def _planned_training(
    precision: str, kind: str, units: list[str], planned: Mapping[str, Any], model: str | None
) -> Precision | None:
    """The plan's measured training precision, or None when it was measured on another CPU model."""
    here = cpu_model() if model is None else model
    if planned.get("cpu") != here:
        return None
    speedup = planned.get("bf16_speedup")
    measured = f"a bf16 training step {speedup:g}x as fast as fp32" if speedup else "bf16 not timed"
    dtype = str(planned["value"])
    return Precision(
        precision,
        dtype,
        kind,
        f"CPU has {', '.join(units)}; the plan measured {measured} on this CPU model, so {dtype} "
        f"(bf16 when at least {BF16_TRAINING_MIN_SPEEDUP:g}x)",
    )


def _unmeasured_note(planned: Mapping[str, Any] | None, model: str | None) -> str:
    """Why a plan's measurement was not followed (it was taken on another CPU), or ''."""
    if not planned or not planned.get("cpu"):
        return ""
    return f"; the plan's measurement was taken on {planned['cpu']}, not on this {model or cpu_model()}"


@contextlib.contextmanager
def autocast(precision: Precision, device_type: str | None = None) -> Iterator[None]:
    """``torch.autocast`` for a reduced precision; nothing for fp32.

    Args:
        precision: the resolved precision.
        device_type: the tensors' device type (default ``precision.device``).
    """
    if not precision.reduced:
        yield
        return
    import torch

    with torch.autocast(device_type=device_type or precision.device, dtype=precision.torch_dtype):
        yield


def with_precision(network: Any, precision: Precision) -> Any:
    """``network`` wrapped in :class:`medseg.networks.Autocast` for a reduced precision, else itself."""
    if not precision.reduced:
        return network
    from medseg.networks.base import Autocast

    return Autocast(network, precision.dtype)


def _lookup(config: Mapping[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("#"):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def precision_overrides(
    config: Mapping[str, Any], precision: Precision, keys: Sequence[str]
) -> dict[str, Any]:
    """``monai.bundle`` overrides that run a bundle config's networks in ``precision``.

    Each of ``keys`` (e.g. ``validate#evaluator#network``) that the merged, unparsed ``config``
    defines is wrapped in :class:`medseg.networks.Autocast` (a reference ``@x`` or expression
    ``$expr`` becomes ``$medseg.networks.Autocast(..., 'bf16')``, a component a ``_target_`` around it). The engines'
    own ``amp`` (CUDA fp16 autocast around the whole inferer) is switched off when the precision is
    not the bundle's fp16 AMP, so the two never nest.

    Args:
        config: the bundle's merged configs, unparsed.
        precision: the resolved precision.
        keys: the config ids of the networks the engines call.
    """
    overrides: dict[str, Any] = {}
    if precision.dtype != "fp16" and "amp" in config:
        overrides["amp"] = False
    if not precision.reduced or precision.dtype == "fp16":  # fp16 on CUDA: the bundle's own AMP
        return overrides
    for key in keys:
        value = _lookup(config, key)
        if isinstance(value, str) and value.startswith("@"):
            overrides[key] = f"$medseg.networks.Autocast({value}, '{precision.dtype}')"
        elif isinstance(value, str) and value.startswith("$"):
            overrides[key] = f"$medseg.networks.Autocast({value[1:]}, '{precision.dtype}')"
        elif isinstance(value, Mapping):
            overrides[key] = {
                "_target_": "medseg.networks.Autocast",
                "network": value,
                "dtype": precision.dtype,
            }
    return overrides


def add_precision_argument(parser: argparse.ArgumentParser, what: str = "the network") -> None:
    """Add ``--precision auto|fp32|bf16`` (default: ``$MEDSEG_PRECISION``, else auto) to a command."""
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help=f"numeric precision of {what}: bf16 autocast, fp32, or auto (default: bf16 on a CPU with "
        "AMX or AVX-512-BF16, fp32 on other CPUs, fp16 AMP on CUDA); stitching, softmax and argmax "
        f"stay fp32. ${PRECISION_ENV} sets the default",
    )
