"""MONAI dictionary transform that loads images with :class:`MedsegReader` only."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from monai.transforms import LoadImaged as MonaiLoadImaged

from medseg.io.reader import MedsegReader

__all__ = ["LoadImaged"]


class LoadImaged(MonaiLoadImaged):
    """``LoadImaged`` that reads with :class:`MedsegReader` and nothing else.

    MONAI's ``LoadImage`` tries its other readers (ITK, NiBabel, PIL ...) when the named reader
    refuses a file, so a DICOM series with a missing slice or a gantry tilt would load silently
    through ITK. Here the strict reader's refusal reaches the user. Same arguments as MONAI's
    ``LoadImaged``; ``reader`` defaults to a ``MedsegReader`` (extra keyword arguments such as
    ``series_uid`` go to it).

    Args:
        keys: keys of the items to load.
        reader: a :class:`MedsegReader` (instance, class or its dotted name); default one.
        kwargs: the other ``monai.transforms.LoadImaged`` arguments.
    """

    def __init__(self, keys: Hashable | Sequence[Hashable], reader: Any = None, **kwargs: Any) -> None:
        super().__init__(keys, reader=reader or "medseg.io.MedsegReader", **kwargs)
        self._loader.readers = [r for r in self._loader.readers if isinstance(r, MedsegReader)]
        if not self._loader.readers:
            raise TypeError(f"medseg.io.LoadImaged reads with MedsegReader only, got reader={reader!r}")
