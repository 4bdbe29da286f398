"""Where medseg looks for the project's data and for bundles: one answer for every command.

medseg runs from a source checkout (``bundles/`` beside the package, the data in ``../shared/data``)
and from a plain ``pip install`` into a fresh venv, used from any folder. Both the data folder
and the bundles folder are therefore looked up in the same order everywhere (CLI, bundle configs,
serving, tests, benchmarks):

1. the environment variable (``MEDSEG_DATA_DIR``, ``MEDSEG_BUNDLES_DIR``), and only it when set;
2. beside the source checkout the package was imported from (absent for an installed package);
3. the working directory and its parents (so ``python -m monai.bundle run`` from a bundle folder
   finds ``../../shared/data``).

Standard library only: the MONAI Label environment imports it too.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "BUNDLES_ENV",
    "CACHE_ENV",
    "DATA_ENV",
    "bundle_search_dirs",
    "bundles_dir",
    "cache_dir",
    "data_dir",
    "find_data_dir",
    "resolve_bundle_path",
    "source_root",
]

DATA_ENV = "MEDSEG_DATA_DIR"
BUNDLES_ENV = "MEDSEG_BUNDLES_DIR"
CACHE_ENV = "MEDSEG_CACHE_DIR"


def source_root() -> Path | None:
    """The source checkout the package runs from (the folder holding ``pyproject.toml``), else None.

    None for an installed (non-editable) package: its parent folder is ``site-packages``.
    """
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "medseg" / "__init__.py").is_file():
        return root
    return None


def cache_dir() -> Path:
    """Where medseg keeps what it measured on this machine (``$MEDSEG_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/medseg``, else ``~/.cache/medseg``); it may not exist yet."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "medseg"


def _upwards(start: Path) -> list[Path]:
    start = start.resolve()
    return [start, *start.parents]


def find_data_dir() -> Path | None:
    """The project data folder (``$MEDSEG_DATA_DIR``, else a ``shared/data`` beside the checkout or
    beside the working directory or one of its parents), or None when there is none."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    candidates = []
    root = source_root()
    if root is not None:
        candidates.append(root.parent / "shared" / "data")
    candidates += [folder.parent / "shared" / "data" for folder in _upwards(Path.cwd())]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return None


def data_dir(subfolder: str = "") -> Path:
    """``find_data_dir() / subfolder``; ``../shared/data/subfolder`` (which may not exist) when none is found.

    Bundle configs call it for their ``dataset_dir``; a missing folder is then reported by the
    loader with its path, which tells the user what to set.
    """
    found = find_data_dir()
    base = found if found is not None else Path("..") / "shared" / "data"
    return base / subfolder if subfolder else base


def bundle_search_dirs() -> list[Path]:
    """Folders a bundle *name* is looked up in, in order (existing ones only)."""
    env = os.environ.get(BUNDLES_ENV)
    if env:
        return [Path(env)]
    candidates = []
    root = source_root()
    if root is not None:
        candidates.append(root / "bundles")
    candidates += [folder / "bundles" for folder in _upwards(Path.cwd())]
    seen: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and candidate.resolve() not in seen:
            seen.append(candidate.resolve())
    return seen


def bundles_dir() -> Path | None:
    """The first folder of :func:`bundle_search_dirs`: where ``medseg serve`` finds bundles by name."""
    dirs = bundle_search_dirs()
    return dirs[0] if dirs else None


def resolve_bundle_path(name_or_path: str | os.PathLike) -> Path | None:
    """A bundle folder given as a path (absolute, or relative to the working directory) or as a
    name under one of :func:`bundle_search_dirs`; None when neither exists."""
    path = Path(name_or_path)
    if path.is_dir():
        return path.resolve()
    if path.is_absolute() or len(path.parts) != 1:
        return None
    for folder in bundle_search_dirs():
        if (folder / path).is_dir():
            return (folder / path).resolve()
    return None
