"""Upload bounds checked before any voxel is read (:mod:`medseg.serve.limits`): header bombs, gzip
bombs, detached NRRD headers, real images passing."""

from __future__ import annotations

import gzip
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.serve.limits import UploadLimits, UploadRefused, check_volume_file


def header_bomb(path: Path, shape=(2048, 2048, 2048)) -> Path:
    """A .nii.gz of a few dozen bytes whose header claims ``shape`` uint8 voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4, 9))
    return path


def gzip_bomb(path: Path, header_shape, inflated_mb: int) -> Path:
    """A real gzip bomb: a NIfTI header followed by ``inflated_mb`` MB of zeros, compressed."""
    header = nib.Nifti1Header()
    header.set_data_shape(header_shape)
    header.set_data_dtype(np.uint8)
    with gzip.open(path, "wb", compresslevel=9) as out:
        out.write(header.binaryblock + b"\0" * 4)
        block = b"\0" * (1 << 20)
        for _ in range(inflated_mb):
            out.write(block)
    return path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_header_and_gzip_bombs_are_refused_at_once_without_memory(tmp_path: Path):
    limits = UploadLimits()
    before = _peak_mb()
    tiny = header_bomb(tmp_path / "tiny.nii.gz")
    assert tiny.stat().st_size < 100
    bomb = gzip_bomb(tmp_path / "bomb.nii.gz", (1024, 1024, 1024), 1024)  # ~1 MB on disk, 1 GB inflated
    liar = gzip_bomb(tmp_path / "liar.nii.gz", (10, 10, 10), 256)  # a small header, 256 MB of data
    for path, expected in ((tiny, "announces 2048x2048x2048"), (bomb, "1024x1024x1024"), (liar, "inflates")):
        start = time.perf_counter()
        with pytest.raises(UploadRefused, match=expected) as info:
            check_volume_file(path, path.name, limits)
        assert info.value.status == 413
        assert time.perf_counter() - start < 2.0
    assert _peak_mb() - before < 100


def test_a_real_image_passes_and_the_byte_limit_holds(hippocampus_dir: Path, tmp_path: Path):
    image = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[0]
    check_volume_file(image, image.name, UploadLimits())
    with pytest.raises(UploadRefused, match="--max-upload-mb"):
        check_volume_file(image, image.name, UploadLimits(max_bytes=100))
    with pytest.raises(UploadRefused, match="--max-voxels"):
        check_volume_file(image, image.name, UploadLimits(max_voxels=1000))
    raw = tmp_path / "raw.nii"
    nib.save(nib.load(image), raw)
    check_volume_file(raw, raw.name, UploadLimits())


def test_nrrd_headers_are_checked_and_detached_data_refused(tmp_path: Path):
    limits = UploadLimits()
    big = tmp_path / "big.nrrd"
    big.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4096 4096 4096\nencoding: raw\n\n")
    with pytest.raises(UploadRefused, match="4096x4096x4096"):
        check_volume_file(big, big.name, limits)
    detached = tmp_path / "detached.nrrd"
    detached.write_bytes(
        b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: /etc/passwd\n\n"
    )
    with pytest.raises(UploadRefused, match="detached") as info:
        check_volume_file(detached, detached.name, limits)
    assert info.value.status == 415
    bomb = tmp_path / "bomb.nrrd"
    bomb.write_bytes(
        b"NRRD0004\ntype: uchar\ndimension: 3\nsizes: 8 8 8\nencoding: gzip\n\n"
        + gzip.compress(b"\0" * (64 << 20))
    )
    with pytest.raises(UploadRefused, match="inflates"):
        check_volume_file(bomb, bomb.name, limits)
    fine = tmp_path / "fine.nrrd"
    fine.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 8 8 8\nencoding: gzip\n\n" + gzip.compress(b"\0" * 1024)
    )
    check_volume_file(fine, fine.name, limits)


def test_limits_come_from_the_environment():
    limits = UploadLimits.from_env({"MEDSEG_SERVE_MAX_UPLOAD_MB": "8", "MEDSEG_SERVE_MAX_VOXELS": "1000"})
    assert limits == UploadLimits(max_bytes=8 << 20, max_voxels=1000)
    assert UploadLimits.from_env({}) == UploadLimits()
