"""Read an input image in a forked child while the parent process is still importing torch and MONAI.

A one-shot command such as ``medseg segment`` spends its first seconds importing torch and MONAI
on one core; reading and validating a DICOM series (pydicom, numpy) needs neither, so a child
forked before those imports reads it on the other core. The parent later asks :func:`take` for
the same ``(path, series_uid, decoder)`` (:func:`medseg.io.image.read_image` asks, once :func:`start`
has registered :func:`take` with it) and gets the child's ``(array, meta)``; if the child
failed, was not started, or was asked for something else, ``take`` returns None and the caller
reads the image itself -- so errors are always reported by the normal path, once.

Linux only (``fork``); elsewhere :func:`start` does nothing.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medseg import background

__all__ = ["start", "take", "cancel"]

logger = logging.getLogger(__name__)

_pending: dict[str, Any] = {}


def _key(path: str | os.PathLike, series_uid: str | None, decoder: str) -> tuple[str, str | None, str]:
    return (str(Path(path).resolve()), series_uid, decoder)


def _read_and_spill(path: str, series_uid: str | None, decoder: str, spill: str) -> tuple:
    """In the child: read the image; the voxels go to ``spill``, the rest is returned."""
    from medseg.io.image import read_image  # in the child, while the parent imports torch

    array, meta = read_image(path, series_uid=series_uid, decoder=decoder)
    # Through a file in memory (tmpfs): one write and one read, where pickling a CT of a few
    # hundred MB through the pipe costs many small copies.
    array = np.ascontiguousarray(array)
    array.tofile(spill)
    return array.dtype.str, array.shape, meta


def _spill_folder() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def start(path: str | os.PathLike, series_uid: str | None = None, decoder: str = "auto") -> bool:
    """Start reading ``path`` in a forked child; returns whether a child was started.

    Call it before torch is imported (a child forked from a process running torch's thread pool
    must not use torch; this one does not, but starting early is the point anyway).
    """
    cancel()
    if not background.fork_available():
        return False
    if not Path(path).exists():
        return False
    handle, spill = tempfile.mkstemp(prefix="medseg-prefetch-", suffix=".raw", dir=_spill_folder())
    os.close(handle)
    job = background.start(_read_and_spill, str(path), series_uid, decoder, spill)
    _pending.update(key=_key(path, series_uid, decoder), job=job, spill=spill)
    from medseg.io.image import use_earlier_reads  # after the fork: the child starts reading first

    use_earlier_reads(take)
    return True


def take(
    path: str | os.PathLike, series_uid: str | None = None, decoder: str = "auto"
) -> tuple[Any, dict[str, Any]] | None:
    """The prefetched ``(array, meta)`` of exactly this read, or None (then read it yourself)."""
    if not _pending or _pending["key"] != _key(path, series_uid, decoder):
        return None
    job, spill = _pending["job"], _pending["spill"]
    _pending.clear()
    try:
        dtype, shape, meta = job.result()
        value = (np.fromfile(spill, dtype=np.dtype(dtype)).reshape(shape), meta)
        status = "ok"
    except Exception:  # noqa: BLE001 - unreadable input, a dead child: the caller reads it again
        status, value = "failed", None
    finally:
        Path(spill).unlink(missing_ok=True)
    if status != "ok":
        logger.debug("the prefetch of %s failed; reading it again", path)
        return None
    logger.debug("using the prefetched read of %s", path)
    return value


def cancel() -> None:
    """Drop a prefetch that will not be asked for."""
    if not _pending:
        return
    job, spill = _pending["job"], _pending["spill"]
    _pending.clear()
    job.cancel()
    Path(spill).unlink(missing_ok=True)
