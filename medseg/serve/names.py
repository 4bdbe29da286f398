"""The one rule for every name a client sends that reaches a file path, and the check that a path
stays inside its root.

Why: a server turns request values into file names (image ids, label tags, model and version names,
upload file names). Stock MONAI Label joins them into paths as they come, so ``tag=..`` or
``image=../../x`` writes or reads outside the datastore. Here every such value is a *plain name* -
letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit, at most :data:`MAX_NAME`
characters (so never ``.``, ``..``, a hidden file, a path, NUL or a flag) - and every path built
from one is resolved and checked to lie inside its root before anything is written or read.
Label tags are not free names at all: they come from :data:`LABEL_TAGS`.

Standard library only: the core venv and the MONAI Label venv import it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from medseg.errors import InputError

__all__ = [
    "FINAL",
    "LABEL_TAGS",
    "MAX_NAME",
    "ORIGINAL",
    "NameRefused",
    "inside",
    "label_tag",
    "plain_name",
]

MAX_NAME = 128
PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
FINAL = "final"  # a clinician's finished label: trained on, always checked against its image
ORIGINAL = "original"  # a model's output kept beside the image (MONAI Label's save_label)
LABEL_TAGS = (FINAL, ORIGINAL)


class NameRefused(InputError):
    """A client's name that cannot become a file name; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}...' ({len(str(value))} characters)"


def plain_name(value: object, what: str = "name") -> str:
    """``value`` when it is a plain name (see the module docstring).

    Args:
        value: what the client sent.
        what: what it names, for the message (``"image id"``, ``"model"``).

    Raises:
        NameRefused: 400, saying which characters a name may have.
    """
    if not isinstance(value, str) or len(value) > MAX_NAME or not PLAIN.fullmatch(value) or ".." in value:
        raise NameRefused(
            f"{what} {_shown(value)} is not a plain name: use letters, digits, '.', '_' and '-' "
            f"(starting with a letter or digit, no '..', at most {MAX_NAME} characters)"
        )
    return value


def label_tag(value: object, allowed: tuple[str, ...] = LABEL_TAGS) -> str:
    """A label tag the server knows (``final`` or ``original``); empty means ``final``.

    Raises:
        NameRefused: 400 for any other tag.
    """
    if value in (None, ""):
        return FINAL
    if not isinstance(value, str) or value not in allowed:
        raise NameRefused(f"label tag {_shown(value)} is not one of: {', '.join(allowed)}")
    return value


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """``root/parts...`` resolved (links followed), checked to lie inside the resolved ``root``.

    Raises:
        NameRefused: 400 when the path leaves ``root`` (``..``, an absolute part, a link pointing out).
    """
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise NameRefused(f"{'/'.join(parts)!r} leads outside the server's folder")
    return target
