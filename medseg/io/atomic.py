"""The one way medseg writes a file: into a fresh temporary file beside it, then ``os.replace``.

Readers never see a half-written NIfTI, SEG, checkpoint or report: the temporary file lives in the
target's folder (same file system, so the rename is atomic on POSIX), has a name no other writer
uses (two processes writing the same target do not collide), is flushed to disk before the rename,
and is removed if the writer fails for any reason, Ctrl-C included. The final file gets the mode a
plain ``open()`` would give (``0o666`` less the umask) unless the caller asks for another one.

Standard library only: the serving code imports it inside the MONAI Label environment too.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_copy", "atomic_replace_folder", "atomic_write", "atomic_write_json", "atomic_write_text"]


def _umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere ``os.umask`` can only read it by setting
    it, which for a moment changes it for every thread (the server writes files from several)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _umask_mode() -> int:
    return 0o666 & ~_umask()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _suffix(name: str) -> str:
    """The suffixes writers infer the format from (``.nii.gz``, ``.png``, ``.json``)."""
    lower = name.lower()
    for double in (".nii.gz", ".tar.gz"):
        if lower.endswith(double):
            return name[-len(double) :]
    return Path(name).suffix


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], Any],
    *,
    mode: int | None = None,
) -> Path:
    """Let ``write`` fill a temporary file beside ``path``, then move it into place.

    Args:
        path: the file to (re)place; its folder must exist.
        write: called with the temporary file's path (an empty file that already exists, whose name
            ends with ``path``'s suffix, e.g. ``.nii.gz``, so writers that infer the format work).
        mode: permission bits of the final file; default ``0o666`` less the process umask.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` raises; the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{_suffix(target.name)}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode() if mode is None else mode)  # mkstemp created it 0600
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), mode=mode)


def atomic_write_json(
    path: str | os.PathLike,
    payload: Any,
    *,
    default: Callable[[Any], Any] | None = None,
    mode: int | None = None,
) -> Path:
    """Write ``payload`` as indented JSON with a final newline to ``path`` atomically.

    The payload is serialised before anything is written, so an unserialisable value leaves no file.
    """
    text = json.dumps(payload, indent=2, default=default) + "\n"
    return atomic_write_text(path, text, mode=mode)


def atomic_copy(src: str | os.PathLike, dest: str | os.PathLike, *, mode: int | None = None) -> Path:
    """Copy ``src`` to ``dest`` atomically (contents and timestamps; the mode follows ``mode``/umask)."""

    def copy(tmp: Path) -> None:
        shutil.copyfile(src, tmp)
        shutil.copystat(src, tmp)

    return atomic_write(dest, copy, mode=mode)


def atomic_replace_folder(staged: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move the complete folder ``staged`` to ``target``, replacing any folder there.

    Readers see the old folder or the new one, never a mix: ``staged`` (filled by the caller, on the
    same file system, e.g. a hidden folder beside ``target``) is renamed into place; an existing
    ``target`` is first renamed aside and deleted after the swap, so for a moment there is no folder
    at ``target`` but never a partial one.

    Args:
        staged: the folder holding every file of the result.
        target: where it belongs; its parent must exist.

    Returns:
        ``target`` as a :class:`~pathlib.Path`.
    """
    staged, target = Path(staged), Path(target)
    os.chmod(staged, 0o777 & ~_umask())  # a mkdtemp folder is 0700; give it a plain mkdir's mode
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(staged, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
