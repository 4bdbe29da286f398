"""Run ``python -m monai.bundle`` in a bundle folder as a user does, for the tests of shipped and
generated bundles: medseg importable from this checkout, the data folder found, the output's tail in
the failure message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from medseg import paths

REPO = Path(__file__).resolve().parents[2]
# the keys of inference.json that medseg's commands and plain ``monai.bundle run`` rely on
INFERENCE_KEYS = (
    "bundle_root", "output_dir", "dataset_dir", "datalist", "device", "network_def", "network", "preprocessing",
    "inferer", "postprocessing", "evaluator", "initialize", "run",
)  # fmt: skip


def bundle_env() -> dict[str, str]:
    """The environment of a user's shell: medseg importable, ``MEDSEG_DATA_DIR`` set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault(paths.DATA_ENV, str(paths.data_dir().resolve()))
    return env


def monai_bundle(bundle: Path, command: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle COMMAND ARGS...`` from the bundle's folder; asserts that it succeeds.

    Args:
        bundle: the bundle folder (the working directory, as in the bundles' READMEs).
        command: ``run``, ``verify_net_in_out``, ...
        args: the command's arguments.
        timeout: seconds before the run is failed.
    """
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", command, *args],
        cwd=bundle,
        capture_output=True,
        text=True,
        env=bundle_env(),
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def verify_net_in_out(bundle: Path) -> None:
    """MONAI's check that inference.json's ``network_def`` maps metadata.json's input to its output."""
    monai_bundle(
        bundle, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.json", "--device", "cpu", timeout=300,
    )  # fmt: skip
