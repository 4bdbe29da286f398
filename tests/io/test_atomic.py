"""medseg.io.atomic: the one atomic writer (temp file beside the target, fsync, mode, cleanup)."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from medseg.io.atomic import atomic_copy, atomic_write, atomic_write_json, atomic_write_text


class _Boom(RuntimeError):
    pass


def _half_then_fail(tmp: Path) -> None:
    with open(tmp, "wb") as handle:
        handle.write(b"half of a file")
        handle.flush()
    raise _Boom("writer died half-way")


def test_failing_writer_leaves_target_and_folder_as_they_were(tmp_path: Path) -> None:
    target = tmp_path / "result.nii.gz"
    target.write_bytes(b"previous")
    with pytest.raises(_Boom):
        atomic_write(target, _half_then_fail)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.nii.gz"]  # no temp file left


def test_failing_writer_creates_nothing_when_target_is_new(tmp_path: Path) -> None:
    with pytest.raises(_Boom):
        atomic_write(tmp_path / "new.json", _half_then_fail)
    assert list(tmp_path.iterdir()) == []


def test_unserialisable_json_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "report.json", {"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_temp_file_keeps_the_suffix_writers_infer_formats_from(tmp_path: Path) -> None:
    seen: list[str] = []
    atomic_write(tmp_path / "seg.nii.gz", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert seen[0].endswith(".nii.gz") and seen[0].startswith(".seg.nii.gz.")
    assert Path(tmp_path / "seg.nii.gz").read_bytes() == b"x"


def test_mode_follows_umask_unless_asked(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        default = atomic_write_text(tmp_path / "a.txt", "a")
        private = atomic_write_text(tmp_path / "b.txt", "b", mode=0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE(default.stat().st_mode) == 0o640
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def test_json_and_copy(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "r.json", {"a": 1})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert (tmp_path / "r.json").read_text().endswith("}\n")
    atomic_copy(tmp_path / "r.json", tmp_path / "copy.json")
    assert (tmp_path / "copy.json").read_bytes() == (tmp_path / "r.json").read_bytes()


def test_concurrent_writers_of_one_target_do_not_collide(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for _ in range(20):
                atomic_write_json(target, {"writer": i, "pad": "x" * 10_000})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(target.read_text())["writer"] in range(4)  # a whole file from one writer
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
