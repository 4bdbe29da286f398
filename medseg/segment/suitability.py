"""Does an input image fit a bundle? Modality, channels, dimensions, voxel spacing and physical extent.

What is plausible for a bundle is data, read from its ``metadata.json``
(``network_data_format.inputs.image``), each key optional:

``modality``
    DICOM Modality the network was trained on (``"MR"``) or a list of them. Checked only
    for DICOM input (NIfTI and NRRD carry no modality); not checked when absent.
``num_channels``
    number of image channels the network takes (default 1).
``plausible_spacing_mm``
    ``[min, max]`` voxel spacing (mm) every image axis must lie in (default ``[0.05, 20]``).
``plausible_extent_mm``
    ``[min, max]`` physical extent (mm, voxels x spacing) every image axis must lie in (default
    ``[4, 2000]``). This is what tells a 40 mm hippocampus crop from a 240 mm whole head.

A failed check raises :class:`UnsuitableInputError` unless ``force`` is set; the dimension check
(a 3-D network cannot run on a 2-D image) cannot be forced. Every check, passed or not, is
recorded for the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medseg.errors import BundleError

__all__ = [
    "DEFAULT_SPACING_MM",
    "DEFAULT_EXTENT_MM",
    "METADATA_KEYS",
    "Check",
    "Suitability",
    "UnsuitableInputError",
    "check_suitability",
    "image_geometry",
]

DEFAULT_SPACING_MM = (0.05, 20.0)
DEFAULT_EXTENT_MM = (4.0, 2000.0)
# The keys of network_data_format.inputs.image this module reads.
METADATA_KEYS = ("modality", "num_channels", "plausible_spacing_mm", "plausible_extent_mm")


class UnsuitableInputError(BundleError):
    """The input clearly does not fit the bundle (wrong modality, size or spacing)."""


@dataclass
class Check:
    """One suitability check: what the bundle expects, what the input has, whether it passed."""

    name: str
    expected: Any
    actual: Any
    passed: bool
    forceable: bool = True
    note: str = ""


@dataclass
class Suitability:
    """All checks of one input against one bundle.

    Attributes:
        checks: every check made.
        forced: True when failed checks were overridden with ``force``.
    """

    checks: list[Check] = field(default_factory=list)
    forced: bool = False

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "forced": self.forced, "checks": [asdict(c) for c in self.checks]}

    def message(self) -> str:
        """One line naming every failed check."""
        parts = [
            f"{c.name} is {_fmt(c.actual)} but the bundle expects {_fmt(c.expected)}" for c in self.failures
        ]
        return "; ".join(parts)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _range(value: Any, default: tuple[float, float], key: str) -> tuple[float, float]:
    if value is None:
        return default
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
        or not 0 <= value[0] <= value[1]
    ):
        raise BundleError(
            f"metadata network_data_format.inputs.image.{key} must be [min, max] in mm, got {value!r}"
        )
    return float(value[0]), float(value[1])


def image_geometry(image: Any) -> dict[str, Any]:
    """Spatial shape, channels, spacing (mm) and extent (mm) of a loaded (I, J, K[, C]) MetaTensor."""
    affine = np.asarray(image.affine, dtype=np.float64)
    rank = affine.shape[0] - 1
    full = [int(s) for s in image.shape]
    channel_dim = image.meta.get("original_channel_dim", float("nan"))
    no_channel = isinstance(channel_dim, str) or (isinstance(channel_dim, float) and math.isnan(channel_dim))
    if no_channel or image.ndim <= rank:
        shape, channels = full[:rank], 1
    else:
        axis = int(channel_dim) % image.ndim
        channels = full[axis]
        shape = [s for i, s in enumerate(full) if i != axis][:rank]
    spacing = np.sqrt((affine[:rank, :rank] ** 2).sum(axis=0))[: len(shape)]
    return {
        "shape": shape,
        "channels": channels,
        "spacing_mm": [round(float(s), 6) for s in spacing],
        "extent_mm": [round(float(n * s), 4) for n, s in zip(shape, spacing, strict=True)],
    }


def check_suitability(
    image: Any, input_format: Mapping[str, Any], spatial_dims: int = 3, force: bool = False
) -> Suitability:
    """Check a loaded image against a bundle's ``network_data_format.inputs.image``.

    Args:
        image: the loaded image, (I, J, K) or channel-last (I, J, K, C) MetaTensor with ``.affine``
            and (for DICOM) ``meta["modality"]``.
        input_format: the bundle's ``network_data_format.inputs.image`` (see the module docstring).
        spatial_dims: spatial dimensions of the network.
        force: record failed checks instead of raising.

    Raises:
        UnsuitableInputError: a check failed and ``force`` is False, or the dimensions do not fit.
    """
    result = Suitability(forced=False)
    geometry = image_geometry(image)
    rank = len(geometry["shape"])
    result.checks.append(Check("dimensions", spatial_dims, rank, rank == spatial_dims, forceable=False))

    declared = input_format.get("modality")
    modality = str(image.meta.get("modality", "") or "") if hasattr(image, "meta") else ""
    if declared:
        allowed = [declared] if isinstance(declared, str) else [str(m) for m in declared]
        if modality:
            result.checks.append(
                Check("modality", allowed, modality, modality.upper() in [a.upper() for a in allowed])
            )
        else:
            result.checks.append(
                Check(
                    "modality", allowed, None, True, note="not checked: the input carries no DICOM Modality"
                )
            )
    else:
        result.checks.append(
            Check(
                "modality", None, modality or None, True, note="not checked: the bundle declares no modality"
            )
        )

    # an interactive bundle's network also reads guidance channels, which the image does not carry
    channels = int(input_format.get("num_channels", 1) or 1) - int(input_format.get("guidance_channels", 0) or 0)
    result.checks.append(Check("channels", channels, geometry["channels"], geometry["channels"] == channels))

    lo, hi = _range(input_format.get("plausible_spacing_mm"), DEFAULT_SPACING_MM, "plausible_spacing_mm")
    spacing = geometry["spacing_mm"]
    result.checks.append(
        Check(
            "spacing_mm",
            [lo, hi],
            spacing,
            all(lo <= s <= hi for s in spacing),
            note="" if "plausible_spacing_mm" in input_format else "bundle declares no range: default used",
        )
    )
    lo, hi = _range(input_format.get("plausible_extent_mm"), DEFAULT_EXTENT_MM, "plausible_extent_mm")
    extent = geometry["extent_mm"]
    result.checks.append(
        Check(
            "extent_mm",
            [lo, hi],
            extent,
            all(lo <= e <= hi for e in extent),
            note="" if "plausible_extent_mm" in input_format else "bundle declares no range: default used",
        )
    )

    failures = result.failures
    hard = [c for c in failures if not c.forceable]
    if hard:
        raise UnsuitableInputError(
            f"input does not fit the bundle: {result.message()}; this cannot be overridden with force=True",
            param="force",
        )
    if failures:
        if not force:
            raise UnsuitableInputError(
                f"input does not fit the bundle: {result.message()}; "
                "use force=True to segment it anyway (the result is likely meaningless)",
                param="force",
            )
        result.forced = True
    return result
