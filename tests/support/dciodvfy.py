"""dciodvfy (dicom3tools), the DICOM validator the writers' tests run on every file they write."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["dciodvfy_errors"]


def _dciodvfy() -> str:
    """The dciodvfy binary; installed with apt-get when missing; the test skips only if that fails."""
    found = shutil.which("dciodvfy")
    if not found and shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "dicom3tools"],
            capture_output=True,
            timeout=600,
            check=False,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        found = shutil.which("dciodvfy")
    if not found:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed and cannot be installed")
    return found


def dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy reports for a file (warnings are kept out)."""
    run = subprocess.run([_dciodvfy(), str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
