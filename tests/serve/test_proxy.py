"""The DICOMweb proxy's rules (:func:`medseg.serve.label.proxy.target_url`): only QIDO/WADO reads and
STOW stores under the configured prefixes ever leave the server."""

from __future__ import annotations

import pytest

from medseg.serve.label.proxy import target_url
from medseg.serve.names import NameRefused

ROOT = "http://pacs.example:8042/dicom-web"
NONE = {"qido": "", "wado": "", "stow": ""}
UID = "1.2.826.0.1.3680043.8.498.12345"


def test_dicomweb_reads_and_stores_map_under_the_root():
    assert (
        target_url("qido", "studies", "GET", "limit=25&offset=0", ROOT, NONE)
        == f"{ROOT}/studies?limit=25&offset=0"
    )
    path = f"studies/{UID}/series/{UID}.2/instances/{UID}.3/frames/1,2"
    assert target_url("wado", path, "GET", "", ROOT, NONE) == f"{ROOT}/{path}"
    assert target_url("wado", f"studies/{UID}/series/{UID}/metadata", "HEAD", "", ROOT, NONE).endswith(
        "/metadata"
    )
    assert target_url("stow", "studies", "POST", "", ROOT, NONE) == f"{ROOT}/studies"
    assert target_url("stow", "", "POST", "", ROOT, NONE) == ROOT
    prefixed = {"qido": "rs", "wado": "wado-rs", "stow": "rs"}
    assert target_url("qido", "series", "GET", "", ROOT, prefixed) == f"{ROOT}/rs/series"
    # some OHIF versions ask QIDO for metadata: it goes to the WADO prefix
    assert (
        target_url("qido", f"studies/{UID}/metadata", "GET", "", ROOT, prefixed)
        == f"{ROOT}/wado-rs/studies/{UID}/metadata"
    )


@pytest.mark.parametrize(
    "op, path, method, status",
    [
        ("wado", "../../tools/shutdown", "POST", 405),  # a write to a read service
        ("wado", "../../tools/shutdown", "GET", 400),
        ("wado", "studies/../../tools/execute-script", "GET", 400),
        ("qido", "../../../system", "GET", 400),
        ("wado", "system", "GET", 400),  # Orthanc's REST API is not DICOMweb
        ("wado", "tools/shutdown", "GET", 400),
        ("qido", "studies/..", "GET", 400),
        ("qido", "studies/.hidden", "GET", 400),
        ("wado", "studies/a%2fb", "GET", 400),
        ("wado", "studies/x\\y", "GET", 400),
        ("wado", "studies/@evil.example", "GET", 400),
        ("stow", "studies", "GET", 405),
        ("stow", "modalities/x/store", "POST", 400),
        ("tools", "shutdown", "POST", 404),
        ("", "studies", "GET", 404),
    ],
)
def test_anything_outside_dicomweb_is_refused(op, path, method, status):
    with pytest.raises(NameRefused) as info:
        target_url(op, path, method, "", ROOT, NONE)
    assert info.value.status == status


def test_query_strings_cannot_smuggle_lines_and_a_local_datastore_has_no_proxy():
    with pytest.raises(NameRefused, match="control"):
        target_url("qido", "studies", "GET", "a=1\r\nHost: evil", ROOT, NONE)
    with pytest.raises(NameRefused, match="too long"):
        target_url("qido", "studies", "GET", "a=" + "x" * 5000, ROOT, NONE)
    with pytest.raises(NameRefused, match="no DICOMweb datastore") as info:
        target_url("qido", "studies", "GET", "", "/data/studies", NONE)
    assert info.value.status == 404
