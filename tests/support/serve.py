"""Helpers for the serving tests (tests/serve, tests/cli/test_serve.py, tests/test_install.py): the label venv,
studies, Dice."""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

sys.path.insert(0, str(REPO_ROOT / "workflows"))
from http_client import call  # noqa: E402, F401 - the workflows' HTTP client, re-exported for the tests


def label_python() -> Path:
    """Python of the MONAI Label venv. Tests that call it are marked ``needs_label_venv``, so the venv is
    there when this runs (conftest skips them, or fails them with ``--require-all``, when it is not)."""
    found = find_label_python()
    if isinstance(found, Path):
        return found
    pytest.fail(f"{found} (is the test marked needs_label_venv?)")


@functools.lru_cache(maxsize=1)
def find_label_python() -> Path | str:
    """The label venv's python, or why there is none (checked once)."""
    explicit = os.environ.get("MEDSEG_LABEL_PYTHON")
    if explicit and Path(explicit).is_file():
        return Path(explicit)
    proc = subprocess.run(
        ["bash", str(REPO_ROOT / "workflows" / "label_venv.sh"), "--path"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        return (
            f"the MONAI Label venv is missing or broken: run workflows/label_venv.sh\n{proc.stderr[-2000:]}"
        )
    return Path(lines[-1]) / "bin" / "python"


def hippocampus_bundles() -> list[str]:
    """Served hippocampus bundles: every bundles/hippocampus_* 3-D segmentation bundle that has weights
    (interactive bundles are served as DeepEdit and tested on their own)."""
    names = []
    for path in sorted((REPO_ROOT / "bundles").glob("hippocampus_*")):
        if (
            not (path / "models" / "model.pt").is_file()
            or not (path / "configs" / "inference.json").is_file()
        ):
            continue
        meta = json.loads((path / "configs" / "metadata.json").read_text())
        if "interactive" in meta:  # served as DeepEdit (tests/serve/test_interactive.py)
            continue
        if len(meta["network_data_format"]["inputs"]["image"].get("spatial_shape", [])) == 3:
            names.append(path.name)
    if not names:
        pytest.fail("no hippocampus bundle with models/model.pt under bundles/")
    return names


def make_msd_studies(msd_dir: Path, dest: Path, case_ids: list[str]) -> Path:
    """An MSD-layout studies folder with links to some real cases (nothing copied)."""
    meta = json.loads((msd_dir / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for cid in case_ids:
            os.symlink(msd_dir / sub / f"{cid}.nii.gz", dest / sub / f"{cid}.nii.gz")
    meta["training"] = [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in case_ids
    ]
    meta["test"] = []
    meta["numTraining"], meta["numTest"] = len(case_ids), 0
    (dest / "dataset.json").write_text(json.dumps(meta, indent=2))
    return dest


def fold_cases(msd_dir: Path, fold: int) -> list[str]:
    ids = sorted(p.name[: -len(".nii.gz")] for p in (msd_dir / "imagesTr").glob("hippocampus_*.nii.gz"))
    return [cid for i, cid in enumerate(ids) if i % 5 == fold]


def read_nifti_bytes(data: bytes):
    import nibabel as nib

    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    image = nib.Nifti1Image.from_bytes(raw)
    return np.asarray(image.dataobj), image.affine


def mean_dice(pred: np.ndarray, truth: np.ndarray, labels=(1, 2)) -> float:
    scores = []
    for value in labels:
        p, t = pred == value, truth == value
        denom = p.sum() + t.sum()
        scores.append(1.0 if denom == 0 else 2.0 * np.logical_and(p, t).sum() / denom)
    return float(np.mean(scores))


def truncated(data: bytes) -> bytes:
    """The first half of a file: a truncated upload."""
    return data[: len(data) // 2]


def not_an_image() -> bytes:
    buf = io.BytesIO()
    buf.write(b"this is a text file, not an image\n" * 20)
    return buf.getvalue()
