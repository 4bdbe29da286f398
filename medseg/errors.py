"""Exception families of medseg.

Every error a user can cause by their input derives from :class:`MedsegError`; the CLI
prints its message as one line and exits non-zero, without a traceback. Messages say
what was wrong and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = [
    "MedsegError",
    "InputError",
    "DicomError",
    "GeometryError",
    "SeriesSelectionError",
    "BundleError",
    "ConfigError",
    "cause_chain",
    "first_line",
]


class MedsegError(Exception):
    """Base class of every error medseg raises for bad input or configuration."""

    exit_code: int = 2


class InputError(MedsegError):
    """An input file or folder is missing, unreadable, empty or of an unknown format."""


class DicomError(InputError):
    """A DICOM file or series cannot be used: corrupt, truncated, non-image only, mixed sizes."""


class GeometryError(InputError):
    """A series' geometry is broken: missing slice, uneven spacing, gantry tilt, non-finite voxels."""


class SeriesSelectionError(InputError):
    """A folder holds several series and none (or an unknown one) was selected."""


class BundleError(MedsegError):
    """A MONAI bundle is missing, incomplete, or does not fit the input."""


class ConfigError(MedsegError):
    """A command-line option or configuration value is invalid."""


def first_line(exc: BaseException) -> str:
    """The first non-blank line of ``str(exc)``, or the exception's class name when it has no text.

    Tracebacks of wrapped errors (MONAI's transform errors, torch's state-dict errors) run to many
    lines; one-line messages quote only their head.
    """
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def cause_chain(exc: BaseException, *, context: bool = True) -> Iterator[BaseException]:
    """``exc``, then what caused it (``__cause__``; also ``__context__`` when ``context``), once each.

    Libraries wrap the error that matters (MONAI's ``apply_transform`` raises ``RuntimeError`` from
    the transform's own error); callers walk this chain to find it.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (current.__context__ if context else None)
