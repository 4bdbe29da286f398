"""Shared fixtures and the markers that say what a test needs.

A test marked ``needs_data`` reads the real data (``$MEDSEG_DATA_DIR`` or ``../shared/data``),
``needs_label_venv`` starts the MONAI Label server in its own venv (``workflows/label_venv.sh``), and
``needs_orthanc`` starts Orthanc with its DICOMweb plugin (``workflows/setup_ci.sh`` installs it), and
``needs_browser`` drives headless Chromium with selenium (Debian's chromium and chromium-driver, which
``workflows/setup_ci.sh`` installs, and selenium from the dev extras).
When a need is missing the test is skipped, and with ``--require-all`` (CI) it fails instead, so that
CI cannot pass by skipping.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Plans made by the tests come from the FLOP model alone, the same on every machine (a measured plan
# depends on the machine and its load); tests of the measurement ask for it with --measure.
os.environ.setdefault("MEDSEG_PLAN_MEASURE", "0")

# dataset-building fixtures (msd_copy, nnunet_copy, kvasir_png, kvasir_jpeg, hippocampus_png, hippocampus_slices)
from support.datasets import (  # noqa: E402, F401
    hippocampus_png,
    hippocampus_slices,
    kvasir_jpeg,
    kvasir_png,
    msd_copy,
    nnunet_copy,
)

from medseg import paths

REPO_ROOT = Path(__file__).resolve().parents[1]
ORTHANC_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def data_dir() -> Path:
    return paths.data_dir().resolve()


def _missing_data() -> str | None:
    path = data_dir()
    return None if path.is_dir() else f"real test data not found at {path}: set {paths.DATA_ENV}"


def _missing_label_venv() -> str | None:
    from support.serve import find_label_python

    found = find_label_python()
    return None if isinstance(found, Path) else found


def _missing_orthanc() -> str | None:
    missing = [name for name in ("Orthanc", "unshare", "ip") if shutil.which(name) is None]
    if not ORTHANC_DICOMWEB_PLUGIN.is_file():
        missing.append("orthanc-dicomweb")
    if missing:
        return f"{', '.join(missing)} not installed: run 'sudo bash workflows/setup_ci.sh'"
    if os.geteuid() != 0:
        return "Orthanc runs in a private network namespace (unshare -n), which needs root"
    return None


def _missing_browser() -> str | None:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed: run 'sudo bash workflows/setup_ci.sh'"
    if importlib.util.find_spec("selenium") is None:
        return "selenium not installed: pip install -e .[dev]"
    return None


NEEDS: dict[str, tuple[str, Callable[[], str | None]]] = {
    "needs_data": ("reads the real data in $MEDSEG_DATA_DIR or ../shared/data", _missing_data),
    "needs_label_venv": (
        "runs the MONAI Label server in its venv (workflows/label_venv.sh)",
        _missing_label_venv,
    ),
    "needs_orthanc": ("runs Orthanc with DICOMweb (workflows/setup_ci.sh)", _missing_orthanc),
    "needs_browser": (
        "drives headless Chromium with selenium (chromium, chromium-driver: workflows/setup_ci.sh)",
        _missing_browser,
    ),
}


@functools.cache
def missing(need: str) -> str | None:
    """Why ``need`` is not met here, or None when it is (checked once per session)."""
    return NEEDS[need][1]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-all",
        action="store_true",
        default=False,
        help="fail (instead of skipping) a test whose needs_* marker is not met; CI runs with it",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, (what, _) in NEEDS.items():
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name in NEEDS:
        if item.get_closest_marker(name) is None:
            continue
        reason = missing(name)
        if reason is None:
            continue
        if item.config.getoption("--require-all"):
            pytest.fail(f"{name}: {reason}", pytrace=False)
        pytest.skip(f"{name}: {reason}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    reason = _missing_data()
    if reason:
        pytest.fail(f"{reason} (mark the test needs_data)")
    return data_dir()


@pytest.fixture(scope="session")
def hippocampus_dir(shared_data: Path) -> Path:
    return shared_data / "msd-task04-hippocampus"


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    """Restore the root logger: a bundle's logging.conf points it at the running test's captured stdout."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
