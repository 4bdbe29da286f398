"""Exception families of medseg.

Every error a user can cause by their input derives from :class:`MedsegError`; the CLI
prints its message as one line and exits non-zero, without a traceback. Messages say
what was wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "MedsegError",
    "InputError",
    "DicomError",
    "GeometryError",
    "SeriesSelectionError",
    "BundleError",
    "ConfigError",
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
