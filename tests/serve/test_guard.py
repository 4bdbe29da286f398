"""What every request passes before any route (:mod:`medseg.serve.label.guard`): names in paths and
queries, bodies within the size limit, per-request scratch folders that always go away."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from medseg.serve.label.guard import check_request_names, clean_scratch, guard, request_folder
from medseg.serve.limits import UploadLimits
from medseg.serve.names import NameRefused


@pytest.mark.parametrize(
    "path, raw, query",
    [
        ("/proxy/dicom/wado/../../tools/shutdown", None, b""),
        ("/proxy/dicom/wado/../../tools", b"/proxy/dicom/wado/..%2f..%2ftools", b""),
        ("/proxy/dicom/wado/../system", b"/proxy/dicom/wado/%2e%2e/system", b""),
        ("/infer/a\\b", None, b""),
        ("/datastore/label", None, b"image=hippocampus_004&tag=..%2f..%2fstudies"),
        ("/datastore/label", None, b"image=..&tag=final"),
        ("/datastore/label", None, b"label=%00&tag=final"),
        ("/datastore/image", None, b"image=" + b"x" * 10_000),
        ("/datastore/image", None, b"image=h%C3%A9"),
        ("/datastore/label", None, b"label=x&tag=/tmp"),
        ("/infer/m", None, b"image=/etc/passwd"),
    ],
)
def test_dot_segments_encoded_separators_and_bad_names_are_refused(path, raw, query):
    with pytest.raises(NameRefused):
        check_request_names(path, raw, query)


def test_ordinary_requests_pass():
    check_request_names("/datastore/label", None, b"label=hippocampus_004&tag=final")
    check_request_names("/infer/hippocampus_unet3d", None, b"image=1.2.826.0.1.3680043.8.498.1&output=image")
    check_request_names("/ohif/app.bundle.js", None, b"")
    check_request_names("/datastore/", None, b"output=all")


def _run(app, scope, chunks):
    """Drive an ASGI app with a body sent in ``chunks``; returns (status, body)."""
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def _reads_everything(scope, receive, send):
    """A route that reads the whole body and answers how much it got (as Starlette's form parser would)."""
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client gone")
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps({"read": total}).encode()})


def _scope(length: int | None) -> dict:
    headers = [(b"content-length", str(length).encode())] if length is not None else []
    return {
        "type": "http",
        "method": "PUT",
        "path": "/datastore/image",
        "query_string": b"",
        "headers": headers,
    }


def test_bodies_over_the_limit_are_refused_by_length_and_while_streaming():
    app = guard(_reads_everything, UploadLimits(max_bytes=1000))
    assert _run(app, _scope(900), [b"x" * 900]) == (200, b'{"read": 900}')
    status, body = _run(app, _scope(5000), [b"x" * 5000])
    assert status == 413 and b"--max-upload-mb" in body
    # chunked (no Content-Length): refused as soon as the count passes the limit
    status, body = _run(app, _scope(None), [b"x" * 400] * 10)
    assert status == 413 and b"--max-upload-mb" in body
    assert _run(guard(_reads_everything, UploadLimits()), _scope(None), [b"x"] * 3) == (200, b'{"read": 3}')


def test_request_folders_go_away_on_every_outcome_and_leftovers_at_start(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MEDSEG_SERVE_WORKDIR", str(tmp_path))
    with request_folder() as folder:
        (folder / "upload.nii.gz").write_bytes(b"x" * 100)
    assert not folder.exists()
    with pytest.raises(RuntimeError), request_folder() as folder:
        (folder / "upload.nii.gz").write_bytes(b"x")
        raise RuntimeError("a check failed")
    assert not folder.exists()
    stale = tmp_path / "uploads" / "request-crashed"
    stale.mkdir(parents=True)
    (stale / "half.nii.gz").write_bytes(b"x" * 10)
    (tmp_path / "uploads" / "loose.bin").write_bytes(b"x")
    clean_scratch()
    assert list((tmp_path / "uploads").iterdir()) == []
