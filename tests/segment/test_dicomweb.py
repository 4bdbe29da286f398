"""DICOMweb inputs of ``medseg segment`` (:mod:`medseg.segment.dicomweb`): the URL forms, and a real
study query against Orthanc (``workflows/orthanc/segment_query.py`` inside ``unshare -n``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.errors import InputError
from medseg.segment.dicomweb import is_dicomweb_url, parse_query

REPO = Path(__file__).resolve().parents[2]


def test_urls_name_a_root_and_qido_filters():
    root = "http://pacs:8042/dicom-web"
    assert parse_query(f"{root}/studies/1.2.3") == (root, {"StudyInstanceUID": "1.2.3"})
    assert parse_query(f"{root}/studies/1.2.3/series/1.2.4/") == (
        root,
        {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.4"},
    )
    assert parse_query(f"{root}?PatientID=P001&StudyDate=20240101-20241231") == (
        root,
        {"PatientID": "P001", "StudyDate": "20240101-20241231"},
    )
    assert (
        is_dicomweb_url(f"{root}/studies/1")
        and not is_dicomweb_url("/data/study")
        and not is_dicomweb_url(Path("x"))
    )


@pytest.mark.parametrize("url", ["http://pacs/dicom-web", "http://pacs/dicom-web/studies/", "https://pacs/"])
def test_a_query_without_a_filter_is_refused(url):
    with pytest.raises(InputError, match="names no study"):
        parse_query(url)


def test_a_malformed_uid_is_refused():
    with pytest.raises(InputError, match="not a DICOM UID"):
        parse_query("http://pacs/dicom-web/studies/..%2f..")


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.needs_orthanc
@pytest.mark.timeout(900)
def test_a_study_query_on_orthanc_is_segmented_like_its_folder(tmp_path: Path):
    report = tmp_path / "report.json"
    script = (
        "ip link set lo up && exec "
        f"'{sys.executable}' '{REPO / 'workflows' / 'orthanc' / 'segment_query.py'}' "
        f"--workdir '{tmp_path / 'sq'}' --bundle hippocampus_unet3d --report '{report}'"
    )
    proc = subprocess.run(
        ["unshare", "-n", "--", "bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert json.loads(report.read_text())["ok"] is True
