"""Small labelled datasets (MSD, nnU-Net raw, PNG) for the dataset, planner and plan-CLI tests, built in
``tmp_path`` from the real data; tests/conftest.py registers these fixtures for every test.

Each builder copies a few real cases (never into the repository) in the layout under test; the
bad-dataset tests then break one case.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

HIPPOCAMPUS_CASES = 6


def _hippocampus_pairs(hippocampus_dir: Path, count: int) -> list[tuple[Path, Path]]:
    meta = json.loads((hippocampus_dir / "dataset.json").read_text())
    entries = sorted(meta["training"], key=lambda e: e["image"])[:count]
    return [
        ((hippocampus_dir / e["image"]).resolve(), (hippocampus_dir / e["label"]).resolve()) for e in entries
    ]


@pytest.fixture
def msd_copy(tmp_path: Path, hippocampus_dir: Path) -> Callable[..., Path]:
    """``make(count=6)``: an MSD copy of the first ``count`` hippocampus cases under ``tmp_path``."""

    def make(count: int = HIPPOCAMPUS_CASES, name: str = "msd") -> Path:
        root = tmp_path / name
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        meta = json.loads((hippocampus_dir / "dataset.json").read_text())
        meta["training"] = []
        for image, label in _hippocampus_pairs(hippocampus_dir, count):
            shutil.copy(image, root / "imagesTr" / image.name)
            shutil.copy(label, root / "labelsTr" / label.name)
            meta["training"].append(
                {"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"}
            )
        meta["numTraining"] = count
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
        return root

    return make


@pytest.fixture
def nnunet_copy(tmp_path: Path, hippocampus_dir: Path) -> Callable[..., Path]:
    """``make(count=6)``: the first hippocampus cases in the nnU-Net v2 raw layout (NIfTI)."""

    def make(count: int = HIPPOCAMPUS_CASES) -> Path:
        root = tmp_path / "nnunet"
        (root / "imagesTr").mkdir(parents=True)
        (root / "labelsTr").mkdir()
        for image, label in _hippocampus_pairs(hippocampus_dir, count):
            cid = image.name.removesuffix(".nii.gz")
            shutil.copy(image, root / "imagesTr" / f"{cid}_0000.nii.gz")
            shutil.copy(label, root / "labelsTr" / f"{cid}.nii.gz")
        meta = {
            "name": "hippocampus nnU-Net copy",
            "channel_names": {"0": "MRI"},
            "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
            "numTraining": count,
            "file_ending": ".nii.gz",
        }
        (root / "dataset.json").write_text(json.dumps(meta, indent=2))
        return root

    return make


def write_kvasir_png(source: Path, root: Path) -> Path:
    """The Kvasir-SEG polyp photos as a 2-D nnU-Net dataset: RGB ``<case>_0000.png``, masks at 127.

    Args:
        source: the ``2d/kvasir-seg`` folder (``images/*.jpg``, ``masks/*.jpg``).
        root: the dataset folder to write (created).
    """
    from PIL import Image

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    cases = sorted(p.stem for p in (source / "images").glob("*.jpg"))
    for cid in cases:
        Image.open(source / "images" / f"{cid}.jpg").convert("RGB").save(
            root / "imagesTr" / f"{cid}_0000.png"
        )
        mask = np.asarray(Image.open(source / "masks" / f"{cid}.jpg").convert("L")) > 127
        Image.fromarray(mask.astype(np.uint8)).save(root / "labelsTr" / f"{cid}.png")
    return _write_kvasir_meta(root, len(cases), ".png")


def write_kvasir_dev(source: Path, root: Path, count: int | None = None) -> Path:
    """The Kvasir-SEG development split as a 2-D nnU-Net raw dataset of JPEG photographs.

    ``imagesTr/<case>_0000.jpg`` and ``labelsTr/<case>.png`` are symbolic links to the split's own
    files (its masks already hold 0/1), so nothing is copied or re-encoded.

    Args:
        source: the ``kvasir-seg-dev`` folder (``images/*.jpg``, ``masks/*.png``).
        root: the dataset folder to write (created; outside the repository).
        count: only the first ``count`` cases by sorted id (default: all).
    """
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    cases = sorted(p.stem for p in (source / "images").glob("*.jpg"))[:count]
    for cid in cases:
        (root / "imagesTr" / f"{cid}_0000.jpg").symlink_to((source / "images" / f"{cid}.jpg").resolve())
        (root / "labelsTr" / f"{cid}.png").symlink_to((source / "masks" / f"{cid}.png").resolve())
    return _write_kvasir_meta(root, len(cases), ".jpg")


def _write_kvasir_meta(root: Path, cases: int, ending: str) -> Path:
    """The nnU-Net v2 ``dataset.json`` of a Kvasir-SEG dataset folder (RGB photos, polyp labels)."""
    meta = {
        "name": "Kvasir-SEG polyps",
        "channel_names": {"0": "R", "1": "G", "2": "B"},
        "labels": {"background": 0, "polyp": 1},
        "numTraining": cases,
        "file_ending": ending,
        "licence": "research and education use (Kvasir-SEG, Jha et al. 2020)",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


@pytest.fixture
def kvasir_jpeg(tmp_path: Path, shared_data: Path) -> Callable[..., Path]:
    """``make(count=10)``: the first Kvasir-SEG development photos as JPEG nnU-Net data (:func:`write_kvasir_dev`)."""

    def make(count: int = 10, name: str = "kvasir_jpeg") -> Path:
        return write_kvasir_dev(shared_data / "kvasir-seg-dev", tmp_path / name, count)

    return make


@pytest.fixture
def kvasir_png(tmp_path: Path, shared_data: Path) -> Path:
    """The Kvasir-SEG polyp photos as a 2-D nnU-Net dataset (:func:`write_kvasir_png`)."""
    return write_kvasir_png(shared_data / "2d" / "kvasir-seg", tmp_path / "kvasir")


@pytest.fixture
def hippocampus_png(tmp_path: Path, hippocampus_dir: Path) -> Path:
    """Grey PNGs: the middle axial slice of the first hippocampus cases (8-bit), with label PNGs."""
    import nibabel as nib
    from PIL import Image

    root = tmp_path / "slices"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    pairs = _hippocampus_pairs(hippocampus_dir, 8)
    for image, label in pairs:
        cid = image.name.removesuffix(".nii.gz")
        volume = np.asanyarray(nib.load(str(image)).dataobj).astype(np.float64)
        labels = np.asanyarray(nib.load(str(label)).dataobj)
        k = volume.shape[2] // 2
        grey = volume[:, :, k] / max(1e-6, float(volume[:, :, k].max())) * 255
        Image.fromarray(grey.astype(np.uint8)).save(root / "imagesTr" / f"{cid}_0000.png")
        Image.fromarray(labels[:, :, k].astype(np.uint8)).save(root / "labelsTr" / f"{cid}.png")
    meta = {
        "name": "hippocampus axial slices",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(pairs),
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def write_hippocampus_slices(hippocampus_dir: Path, root: Path, count: int | None = None) -> Path:
    """A 2-D nnU-Net dataset with one foreground class: one axial slice of each hippocampus case.

    Each case contributes the axial slice (third axis) with the most hippocampus, as a grey 8-bit
    PNG, and its label with both hippocampus parts merged into one class. One slice per case keeps
    the fixed split by case: no subject has slices in two folds.

    Args:
        hippocampus_dir: the MSD hippocampus task folder.
        root: the dataset folder to write (created).
        count: the first ``count`` cases by sorted id (default all 260).
    """
    import nibabel as nib
    from PIL import Image

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = json.loads((hippocampus_dir / "dataset.json").read_text())
    pairs = _hippocampus_pairs(hippocampus_dir, count or len(meta["training"]))
    for image, label in pairs:
        cid = image.name.removesuffix(".nii.gz")
        volume = np.asanyarray(nib.load(str(image)).dataobj).astype(np.float64)
        mask = np.asanyarray(nib.load(str(label)).dataobj) > 0
        k = int(np.argmax(mask.sum(axis=(0, 1))))
        grey = volume[:, :, k] / max(1e-6, float(volume[:, :, k].max())) * 255
        Image.fromarray(grey.astype(np.uint8)).save(root / "imagesTr" / f"{cid}_0000.png")
        Image.fromarray(mask[:, :, k].astype(np.uint8)).save(root / "labelsTr" / f"{cid}.png")
    dataset = {
        "name": "hippocampus axial slices",
        "description": "one axial slice per MSD Task04 case, both hippocampus parts as one class",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "hippocampus": 1},
        "numTraining": len(pairs),
        "file_ending": ".png",
        "licence": meta.get("licence", "CC-BY-SA 4.0"),
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return root


@pytest.fixture
def hippocampus_slices(tmp_path: Path, hippocampus_dir: Path) -> Callable[..., Path]:
    """``make(count=None)``: :func:`write_hippocampus_slices` under ``tmp_path``."""

    def make(count: int | None = None) -> Path:
        return write_hippocampus_slices(hippocampus_dir, tmp_path / "hippocampus_slices", count)

    return make
