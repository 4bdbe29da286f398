"""``medseg serve`` as a user runs it: prepares the workdir, prints the ready URL, stops on SIGTERM.

Also checks the workdir preparation without a server: DICOM series converted, MSD labels imported
as copies, nothing written into the studies, shipped weights copied (not linked).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.serve import REPO_ROOT, call, fold_cases, hippocampus_bundles, label_python, make_msd_studies

from medseg.errors import BundleError, ConfigError, InputError
from medseg.serve.launcher import free_port
from medseg.serve.workdir import discover_bundles, mirror_studies, prepare_workdir

pytestmark = pytest.mark.needs_data


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def test_mirror_dicom_folder_converts_series_and_never_writes_the_source(shared_data: Path, tmp_path: Path):
    source = shared_data / "dicom" / "hippocampus-crops"
    before = _snapshot(source)
    report = mirror_studies(source, tmp_path / "ds")
    assert sorted(report.images) == ["Study1", "Study2", "Study3"]
    assert sorted(report.converted) == ["Study1", "Study2", "Study3"]
    from medseg.io import load_image

    for sid in report.images:
        converted = load_image(tmp_path / "ds" / f"{sid}.nii.gz")
        original = load_image(source / sid)
        assert converted.shape == original.shape
        assert (converted.affine - original.affine).abs().max() < 1e-4
    # a second run reuses the conversions
    again = mirror_studies(source, tmp_path / "ds")
    assert sorted(again.images) == sorted(report.images)
    assert _snapshot(source) == before


def test_mirror_msd_links_images_and_copies_labels(hippocampus_dir: Path, tmp_path: Path):
    cases = fold_cases(hippocampus_dir, 0)[:3]
    studies = make_msd_studies(hippocampus_dir, tmp_path / "studies", cases)
    report = mirror_studies(studies, tmp_path / "ds")
    assert report.images == cases and report.labels == cases
    for cid in cases:
        image = tmp_path / "ds" / f"{cid}.nii.gz"
        label = tmp_path / "ds" / "labels" / "final" / f"{cid}.nii.gz"
        assert image.is_symlink()
        assert label.is_file() and not label.is_symlink()  # a client's label save must not write through
        assert label.read_bytes() == (hippocampus_dir / "labelsTr" / f"{cid}.nii.gz").read_bytes()


def test_mirror_refuses_bad_studies(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        mirror_studies(tmp_path / "missing", tmp_path / "ds")
    with pytest.raises(ConfigError, match="inside the studies"):
        mirror_studies(tmp_path, tmp_path / "ds")


def test_an_empty_studies_folder_gives_an_empty_datastore(tmp_path: Path):
    # clinicians upload images from 3D Slicer: an empty folder is a valid start (stock MONAI Label accepts it)
    (tmp_path / "empty").mkdir()
    report = mirror_studies(tmp_path / "empty", tmp_path / "ds")
    assert report.images == [] and report.labels == []
    assert (tmp_path / "ds").is_dir() and not any((tmp_path / "ds").iterdir())
    assert not any((tmp_path / "empty").iterdir())


def test_prepare_copies_bundles_and_rejects_unknown_ones(tmp_path: Path):
    names = hippocampus_bundles()
    prepared = prepare_workdir(tmp_path / "work", None, discover_bundles(REPO_ROOT / "bundles", names))
    for name in names:
        served = prepared.app_dir / "model" / name / "models" / "model.pt"
        shipped = REPO_ROOT / "bundles" / name / "models" / "model.pt"
        assert served.is_file() and not served.is_symlink()
        assert os.stat(served).st_ino != os.stat(shipped).st_ino
        assert served.read_bytes() == shipped.read_bytes()
    assert (prepared.app_dir / "main.py").read_text().count("MedsegLabelApp") >= 1
    with pytest.raises(BundleError, match="no bundle 'nope'"):
        discover_bundles(REPO_ROOT / "bundles", ["nope"])
    with pytest.raises(ConfigError):
        discover_bundles(REPO_ROOT / "bundles", ["../etc"])


@pytest.mark.slow
@pytest.mark.needs_label_venv
@pytest.mark.timeout(900)
def test_medseg_serve_prints_ready_url_and_stops_on_sigterm(hippocampus_dir: Path, tmp_path: Path):
    python = label_python()
    studies = make_msd_studies(hippocampus_dir, tmp_path / "studies", fold_cases(hippocampus_dir, 0)[:2])
    port = free_port()
    env = dict(os.environ, MEDSEG_LABEL_PYTHON=str(python))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medseg",
            "serve",
            "--studies",
            str(studies),
            "--port",
            str(port),
            "--workdir",
            str(tmp_path / "work"),
            "--log",
            str(tmp_path / "server.log"),
            "--bundles",
            hippocampus_bundles()[0],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        deadline = time.monotonic() + 600
        lines = []
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            lines.append(line)
            match = re.search(r"ready at (http://127\.0\.0\.1:\d+)/", line)
            if match:
                ready = match.group(1)
                break
        assert ready == f"http://127.0.0.1:{port}", "".join(lines)[-3000:]
        assert call("GET", f"{ready}/info/").status == 200
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - start < 60
        with socket.socket() as sock:  # nothing listens any more
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        # no process of the server's group is left
        out = subprocess.run(["ps", "-eo", "pid,args"], stdout=subprocess.PIPE, text=True).stdout
        assert str(tmp_path / "work") not in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def test_medseg_serve_refuses_a_busy_port_and_bad_options(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "medseg",
                "serve",
                "--port",
                str(port),
                "--workdir",
                str(tmp_path / "w"),
                "--prepare-only",
            ],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=120,
        )
    assert proc.returncode == 2 and "is in use" in proc.stderr, proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "medseg",
            "serve",
            "--bundles",
            "no_such_bundle",
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 2 and "no bundle 'no_such_bundle'" in proc.stderr, proc.stderr
