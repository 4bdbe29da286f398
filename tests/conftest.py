"""Shared fixtures: locate the real data in ``MEDSEG_DATA_DIR`` or ``../shared/data``."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg import paths

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    return paths.data_dir().resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if not path.is_dir():
        pytest.fail(f"real test data not found at {path}: set MEDSEG_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def hippocampus_dir(shared_data: Path) -> Path:
    return shared_data / "msd-task04-hippocampus"
