"""Reading an input in a forked child during start-up (medseg.io.prefetch)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import GeometryError
from medseg.io import prefetch, read_image

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork-based, Linux only"),
    pytest.mark.needs_data,
]


@pytest.fixture
def series(shared_data: Path) -> Path:
    return shared_data / "dicom" / "hippocampus-crops" / "Study1"


def test_prefetched_read_equals_a_direct_read(series: Path) -> None:
    assert prefetch.start(series)
    # asked for something else: not used, and still pending for the right read
    assert prefetch.take(series, series_uid="1.2.3") is None
    array, meta = read_image(series)  # takes the prefetched result
    assert prefetch.take(series) is None  # used once only
    direct_array, direct_meta = read_image(series)
    np.testing.assert_array_equal(array, direct_array)
    np.testing.assert_allclose(meta["affine"], direct_meta["affine"])
    assert meta["sop_instance_uids"] == direct_meta["sop_instance_uids"]


def test_a_failed_prefetch_leaves_the_error_to_the_normal_read(series: Path, tmp_path: Path) -> None:
    broken = tmp_path / "series"
    shutil.copytree(series, broken)
    files = sorted(p for p in broken.rglob("*") if p.is_file())
    files[len(files) // 2].unlink()  # a missing slice
    assert prefetch.start(broken)
    with pytest.raises(GeometryError, match="missing slice"):
        read_image(broken)


def test_cancel_stops_an_unused_prefetch(series: Path) -> None:
    assert prefetch.start(series)
    prefetch.cancel()
    assert prefetch.take(series) is None


def test_reading_does_not_import_torch(series: Path) -> None:
    code = (
        "import sys; from medseg.io import prefetch, read_image; "
        f"read_image({str(series)!r}); "
        "assert 'torch' not in sys.modules and 'monai' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_no_spill_file_is_left_behind(series: Path) -> None:
    import glob
    import tempfile

    def spills() -> set[str]:
        return set(glob.glob("/dev/shm/medseg-prefetch-*")) | set(
            glob.glob(str(Path(tempfile.gettempdir()) / "medseg-prefetch-*"))
        )

    before = spills()
    prefetch.start(series)
    read_image(series)
    prefetch.start(series)
    prefetch.cancel()
    assert spills() == before
