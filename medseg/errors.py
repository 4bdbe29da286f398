"""Exception families of medseg.

Every error a user can cause by their input derives from :class:`MedsegError`; the CLI
prints its message as one line and exits non-zero, without a traceback. Messages say
what was wrong and what to do about it.

Library code speaks the library's language: an error about an argument names the Python
parameter (``overlap must be in [0, 1)``) and carries it as ``param``; the command line knows
which flag sets that parameter and renders the message with the flag instead
(:meth:`MedsegError.with_flag`), so one message serves both audiences. While the CLI runs a
command inside :func:`flag_names`, ``str(exc)`` itself names the flag, so messages the
library collects as text (a batch's failures) read right on the console too.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar

__all__ = [
    "MedsegError",
    "InputError",
    "DicomError",
    "GeometryError",
    "SeriesSelectionError",
    "DatasetError",
    "BundleError",
    "ConfigError",
    "cause_chain",
    "first_line",
    "flag_names",
]

# How the running front end names a parameter (the CLI: its flag); None: as in Python.
_FLAG_OF: ContextVar[Callable[[str], str] | None] = ContextVar("medseg_flag_of", default=None)


@contextlib.contextmanager
def flag_names(flag_of: Callable[[str], str]) -> Iterator[None]:
    """Within the block, ``str()`` of a :class:`MedsegError` names its parameter as ``flag_of(param)``.

    Args:
        flag_of: maps a Python parameter name to the flag that sets it (``"overlap"`` -> ``"--overlap"``).
    """
    token = _FLAG_OF.set(flag_of)
    try:
        yield
    finally:
        _FLAG_OF.reset(token)


class MedsegError(Exception):
    """Base class of every error medseg raises for bad input or configuration.

    Args:
        message: what was wrong and what to do; a parameter is named as in Python (``force=True``,
            ``series_uid``), not as a command-line flag.
        param: the Python parameter the error is about, if any; the CLI names its flag instead.
    """

    exit_code: int = 2

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def __str__(self) -> str:
        flag_of = _FLAG_OF.get()
        return self.with_flag(flag_of(self.param)) if flag_of and self.param else super().__str__()

    def with_flag(self, flag: str) -> str:
        """The message with its parameter (``param`` or ``param=True``) named as ``flag``.

        The first mention is replaced; a message that does not mention the parameter gets the flag
        as a prefix (``--overlap: ...``), so the user always learns which option was wrong.
        """
        message = super().__str__()
        if not self.param:
            return message
        pattern = rf"(?<![\w.-]){re.escape(self.param)}(=True)?(?![\w])"
        rendered, count = re.subn(pattern, flag, message, count=1)
        return rendered if count else f"{flag}: {message}"


class InputError(MedsegError):
    """An input file or folder is missing, unreadable, empty or of an unknown format."""


class DicomError(InputError):
    """A DICOM file or series cannot be used: corrupt, truncated, non-image only, mixed sizes."""


class GeometryError(InputError):
    """A series' geometry is broken: missing slice, uneven spacing, gantry tilt, non-finite voxels."""


class SeriesSelectionError(InputError):
    """A folder holds several series and none (or an unknown one) was selected."""


class DatasetError(InputError):
    """A labelled dataset cannot be planned or trained on: the message names the case and the fix."""


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
