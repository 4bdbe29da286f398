"""``medseg serve`` against a hostile client with an annotator and a user account, through HTTP.

One real server (users file, the shipped hippocampus bundle, an MSD studies folder of three fold-1
cases whose images are links, one of them to a file outside the studies folder) and, for the
DICOMweb proxy, a second one whose PACS is a stand-in that records every request reaching it.
Each attack asserts the status, the message, and that nothing outside the datastore changed: the
studies folder (link targets included) and a canary file beside it are hashed before and after,
and no file appears outside the workdir. Bombs are refused in under 2 s with the server's peak
memory rising by less than 300 MB while ``GET /info/`` keeps answering in under 1 s.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from support.serve import REPO_ROOT, call, fold_cases, label_python, make_msd_studies

from medseg.serve.access import auth_environment
from medseg.serve.launcher import LabelServer, upload_environment
from medseg.serve.users import add_user
from medseg.serve.workdir import discover_bundles, prepare_workdir

pytestmark = [pytest.mark.slow, pytest.mark.needs_data, pytest.mark.needs_label_venv]

BUNDLE = "hippocampus_unet3d"
SECRET = "hostile-tests-secret-0123456789abcdef-0123"
ROLES = {"user": "user", "annotator": "annotator", "admin": "admin", "victim": "annotator"}
MAX_UPLOAD_MB = 16


def password(name: str) -> str:
    return f"{name}-pass-{name[::-1]}"


def token(url: str, name: str) -> str:
    body = f"username={name}&password={password(name)}".encode()
    answer = call("POST", f"{url}/auth/token", data=body, content_type="application/x-www-form-urlencoded")
    assert answer.status == 200, answer.detail
    return answer.json()["access_token"]


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def raw_request(
    url: str, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, str]:
    """One request with the target sent exactly as given (no client-side path normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest(method, target, skip_accept_encoding=True)
    for key, value in {**headers, "Content-Length": str(len(body))}.items():
        conn.putheader(key, value)
    conn.endheaders(body)
    answer = conn.getresponse()
    text = answer.read().decode(errors="replace")
    conn.close()
    return answer.status, text


def fingerprint(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (links followed), and every entry's name."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return found


def header_bomb(shape=(2048, 2048, 2048)) -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    return gzip.compress(header.binaryblock + b"\0" * 4, 9)


def gzip_bomb(shape=(1024, 1024, 1024)) -> bytes:
    """About 1 MB: a NIfTI header claiming 1024^3 voxels, then 1 GB of zeros, gzip-compressed."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(header.binaryblock + b"\0" * 4)]
    block = b"\0" * (1 << 20)
    parts += [z.compress(block) for _ in range(1024)]
    parts.append(z.flush())
    return b"".join(parts)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, hippocampus_dir: Path):
    root = tmp_path_factory.mktemp("hostile")
    cases = fold_cases(hippocampus_dir, 1)[:3]  # never fold 0 (the test fold)
    studies = make_msd_studies(hippocampus_dir, root / "studies", cases[:2])
    # a study image that is a link to a file outside the studies folder (a copy the test owns)
    outside = root / "outside"
    outside.mkdir()
    linked = cases[2]
    shutil.copy(hippocampus_dir / "imagesTr" / f"{linked}.nii.gz", outside / f"{linked}.nii.gz")
    os.symlink(outside / f"{linked}.nii.gz", studies / "imagesTr" / f"{linked}.nii.gz")
    canary = root / "canary.txt"
    canary.write_text("must never change\n")
    users = root / "users.json"
    for name, role in ROLES.items():
        add_user(users, name, role, password(name))
    env = {
        **auth_environment(str(users), None, 60.0),
        **upload_environment(MAX_UPLOAD_MB, 512**3),
        "MEDSEG_SERVE_AUTH_SECRET": SECRET,
    }
    prepared = prepare_workdir(root / "work", str(studies), discover_bundles(REPO_ROOT / "bundles", [BUNDLE]))
    # what a crashed server left behind: removed at start-up
    leftover = root / "work" / "uploads" / "request-crashed"
    leftover.mkdir(parents=True)
    (leftover / "label.nii.gz").write_bytes(b"\0" * 4096)
    tmp_before = {p.name for p in Path("/tmp").iterdir()}
    server = LabelServer(label_python(), prepared, log=root / "server.log", infer_workers=1, extra_env=env)
    server.start()
    try:
        assert server.wait_ready(timeout=420) == {}
        url = server.url
        state = {
            "url": url,
            "root": root,
            "work": root / "work",
            "server": server,
            "cases": cases,
            "linked": linked,
            "outside": outside,
            "tokens": {name: token(url, name) for name in ("user", "annotator", "admin")},
            "before": {
                "studies": fingerprint(studies),
                "outside": fingerprint(outside),
                "canary": canary.read_text(),
            },
            "top": sorted(p.name for p in root.iterdir()),
            "tmp_before": tmp_before,
        }
        assert not leftover.exists(), "leftovers of a crash are removed at start-up"
        yield state
    finally:
        server.stop()


def assert_nothing_outside_changed(h) -> None:
    root = h["root"]
    assert fingerprint(root / "studies") == h["before"]["studies"]
    assert fingerprint(h["outside"]) == h["before"]["outside"]
    assert (root / "canary.txt").read_text() == h["before"]["canary"]
    assert sorted(p.name for p in root.iterdir()) == h["top"]  # no folder created beside the workdir
    labels = h["work"] / "datastore" / "labels"
    assert {p.name for p in labels.iterdir()} <= {"final", "original"}


def assert_no_scratch_left(h) -> None:
    uploads = h["work"] / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    leftovers = [p for p in (h["work"] / "tmp").rglob("*") if p.is_file() and "torchinductor" not in str(p)]
    assert leftovers == []
    new_tmp = {p.name for p in Path("/tmp").iterdir()} - h["tmp_before"]  # the server's old scratch names
    assert not [n for n in new_tmp if n.startswith(("medseg-label-", "medseg-upload-"))], new_tmp


def label_bytes(h, image: str) -> bytes:
    answer = call(
        "GET", f"{h['url']}/datastore/label?label={image}&tag=final", headers=bearer(h["tokens"]["user"])
    )
    assert answer.status == 200, answer.detail
    return answer.body


# --- 1. names that reach paths ---------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_label_tags_and_ids_cannot_leave_the_datastore(hostile):
    h = hostile
    url, annotator = h["url"], bearer(h["tokens"]["annotator"])
    image = h["cases"][0]
    label = label_bytes(h, image)
    studies = str(h["root"] / "studies" / "imagesTr")
    for tag in (studies, "..", "/abs/path", "../../../x", "labels/../..", "draft", "final\x00"):
        answer = call(
            "PUT",
            f"{url}/datastore/label?image={image}&tag={tag.replace(chr(0), '%00')}",
            files={"label": ("label.nii.gz", label)},
            headers=annotator,
        )
        assert answer.status == 400, (tag, answer.status, answer.detail)
        assert "not one of: final, original" in answer.detail or "plain name" in answer.detail
    for bad_id in ("..", "../x", "%2e%2e", "/etc/passwd", "a%00b", "x" * 10_000, "h%C3%A9", "..%2fstudies"):
        status, text = raw_request(
            url, "GET", f"/datastore/label?label={bad_id}&tag=final", bearer(h["tokens"]["user"])
        )
        assert status == 400 and ("plain name" in text or "'..'" in text), (bad_id, status, text[:200])
        upload = call(
            "PUT",
            f"{url}/datastore/image?image={bad_id}",
            files={"file": ("x.nii.gz", label)},
            headers=annotator,
        )
        assert upload.status == 400, (bad_id, upload.status)
    assert (
        call(
            "PUT",
            f"{url}/datastore/label?image={image}&tag=final",
            files={"label": ("l.nii.gz", label)},
            headers=annotator,
        ).status
        == 200
    )
    assert_nothing_outside_changed(h)


@pytest.mark.timeout(600)
def test_an_inference_result_is_never_saved_as_a_final_label(hostile):
    h = hostile
    url, annotator = h["url"], bearer(h["tokens"]["annotator"])
    image = h["cases"][1]
    final_before = label_bytes(h, image)
    for params, expected in (
        ({"save_label": True, "label_tag": "final"}, "label_tag 'original'"),
        ({"save_label": True, "label_tag": "../../studies"}, "not one of"),
        ({"save_label": True, "label_tag": "/tmp/x"}, "not one of"),
        ({"result_extension": "/../../x"}, "result_extension"),
    ):
        answer = call(
            "POST",
            f"{url}/infer/{BUNDLE}?image={image}",
            fields={"params": json.dumps(params)},
            headers=annotator,
        )
        assert answer.status == 400 and expected in answer.detail, (params, answer.status, answer.detail)
    saved = call(
        "POST",
        f"{url}/infer/{BUNDLE}?image={image}",
        fields={"params": '{"save_label": true}'},
        headers=annotator,
    )
    assert saved.status == 200
    assert (h["work"] / "datastore" / "labels" / "original" / f"{image}.nii.gz").is_file()
    assert label_bytes(h, image) == final_before  # the final label is what the clinician submitted
    assert_nothing_outside_changed(h)


@pytest.mark.timeout(600)
def test_a_study_that_links_outside_is_replaced_never_written_through(hostile):
    h = hostile
    url, annotator = h["url"], bearer(h["tokens"]["annotator"])
    linked = h["linked"]
    target = h["work"] / "datastore" / f"{linked}.nii.gz"
    assert target.is_symlink()
    image = (h["outside"] / f"{linked}.nii.gz").read_bytes()
    answer = call(
        "PUT",
        f"{url}/datastore/image?image={linked}",
        files={"file": (f"{linked}.nii.gz", image)},
        headers=annotator,
    )
    assert answer.status == 200, answer.detail
    assert not target.is_symlink() and target.is_file()
    assert_nothing_outside_changed(h)


@pytest.mark.timeout(600)
def test_a_session_takes_one_checked_image_and_never_unpacks_an_archive(hostile):
    import io
    import tarfile

    h = hostile
    url, annotator = h["url"], bearer(h["tokens"]["annotator"])
    escape = io.BytesIO()
    with tarfile.open(fileobj=escape, mode="w:gz") as tar:
        payload = b"written outside the sessions folder"
        member = tarfile.TarInfo("../../../../escaped.txt")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    answer = call(
        "PUT",
        f"{url}/session/?uncompress=true",
        files={"files": ("x.tar.gz", escape.getvalue())},
        headers=annotator,
    )
    assert answer.status == 400 and "archives are not unpacked" in answer.detail
    answer = call(
        "PUT", f"{url}/session/", files={"files": ("x.tar.gz", escape.getvalue())}, headers=annotator
    )
    assert answer.status == 415
    answer = call("PUT", f"{url}/session/", files={"files": ("b.nii.gz", header_bomb())}, headers=annotator)
    assert answer.status == 413
    image = (h["outside"] / f"{h['linked']}.nii.gz").read_bytes()
    created = call("PUT", f"{url}/session/", files={"files": ("scan.nii.gz", image)}, headers=annotator)
    assert created.status == 200, created.detail
    assert not list(h["root"].rglob("escaped.txt"))
    assert_no_scratch_left(h)
    assert_nothing_outside_changed(h)


# --- 2. bounded inputs -------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_bombs_are_refused_fast_with_bounded_memory_while_the_server_answers(hostile):
    h = hostile
    url, annotator = h["url"], bearer(h["tokens"]["annotator"])
    image = h["cases"][0]
    tiny, bomb = header_bomb(), gzip_bomb()
    assert len(tiny) < 100 and len(bomb) < 1.5 * 2**20
    pid = h["server"].process.pid
    peak_before = peak_rss_mb(pid)
    latencies: list[float] = []
    stop = threading.Event()

    def poll_info() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            assert call("GET", f"{url}/info/", headers=bearer(h["tokens"]["user"])).status == 200
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_info, daemon=True)
    poller.start()
    try:
        for payload in (tiny, bomb):
            for method, route, field in (
                ("PUT", f"/datastore/label?image={image}", "label"),
                ("PUT", "/datastore/image?image=bomb_case", "file"),
                ("POST", f"/infer/{BUNDLE}", "file"),
            ):
                start = time.perf_counter()
                answer = call(
                    method, f"{url}{route}", files={field: ("scan.nii.gz", payload)}, headers=annotator
                )
                seconds = time.perf_counter() - start
                assert answer.status == 413 and "--max-voxels" in answer.detail, (
                    route,
                    answer.status,
                    answer.detail,
                )
                assert seconds < 2.0, (route, seconds)
    finally:
        stop.set()
        poller.join(timeout=30)
    assert latencies and max(latencies) < 1.0, max(latencies)
    assert peak_rss_mb(pid) - peak_before < 300
    images = call("GET", f"{url}/datastore/?output=all", headers=bearer(h["tokens"]["user"])).json()[
        "objects"
    ]
    assert "bomb_case" not in images
    assert_no_scratch_left(h)
    assert_nothing_outside_changed(h)


@pytest.mark.timeout(600)
def test_uploads_over_the_size_limit_are_refused_while_they_stream_in(hostile):
    h = hostile
    url, annotator = h["url"], bearer(h["tokens"]["annotator"])
    host, port = url.removeprefix("http://").split(":")
    # refused from its Content-Length: the answer comes before a byte of the body is sent
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.putrequest("PUT", "/datastore/image?image=too_big")
    for key, value in {**annotator, "Content-Type": "multipart/form-data; boundary=x"}.items():
        conn.putheader(key, value)
    conn.putheader("Content-Length", str((MAX_UPLOAD_MB + 1) << 20))
    conn.endheaders()
    answer = conn.getresponse()
    detail = json.loads(answer.read())["detail"]
    conn.close()
    assert answer.status == 413 and "--max-upload-mb" in detail
    # (a chunked body, with no Content-Length, is cut off as it streams: tests/serve/test_guard.py)
    # a client that disconnects half-way leaves nothing behind
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            f"PUT /datastore/image?image=gone HTTP/1.1\r\nHost: x\r\nAuthorization: {annotator['Authorization']}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {8 << 20}\r\n\r\n".encode()
            + b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.nii.gz"\r\n\r\n'
            + b"\0" * (2 << 20)
        )
    time.sleep(2.0)
    images = call("GET", f"{url}/datastore/?output=all", headers=bearer(h["tokens"]["user"])).json()[
        "objects"
    ]
    assert "too_big" not in images and "gone" not in images
    assert_no_scratch_left(h)


@pytest.mark.timeout(600)
def test_a_dataset_download_leaves_no_archive_behind(hostile):
    import io
    import zipfile

    h = hostile
    answer = call("GET", f"{h['url']}/datastore/dataset", headers=bearer(h["tokens"]["annotator"]))
    assert answer.status == 200
    assert any(n.startswith("label/") for n in zipfile.ZipFile(io.BytesIO(answer.body)).namelist())
    time.sleep(0.5)
    assert_no_scratch_left(h)


@pytest.mark.timeout(600)
def test_refused_and_failed_uploads_leave_nothing_behind(hostile):
    h = hostile
    url, annotator = h["url"], bearer(h["tokens"]["annotator"])
    image = h["cases"][0]
    truncated = label_bytes(h, image)[:300]
    cases = (
        ("PUT", f"/datastore/label?image={image}", "label", "l.nii.gz", truncated, 422),
        ("PUT", "/datastore/image?image=broken", "file", "b.nii.gz", truncated, 422),
        ("POST", f"/infer/{BUNDLE}", "file", "b.nii.gz", truncated, 422),
        ("PUT", f"/datastore/label?image={image}", "label", "l.txt", b"not a label", 415),
    )
    for method, route, field, name, payload, status in cases:
        answer = call(method, f"{url}{route}", files={field: (name, payload)}, headers=annotator)
        assert answer.status == status, (route, answer.status, answer.detail)
    assert_no_scratch_left(h)


# --- 3. logins, tokens, paths shown ----------------------------------------------------------------


@pytest.mark.timeout(600)
def test_logins_are_throttled_for_known_and_unknown_names(hostile):
    url = hostile["url"]

    def login(name: str, secret: str):
        body = f"username={name}&password={secret}".encode()
        return call("POST", f"{url}/auth/token", data=body, content_type="application/x-www-form-urlencoded")

    for name in ("victim", "no-such-user"):
        statuses = [login(name, "wrong-guess").status for _ in range(7)]
        assert statuses[:5] == [401] * 5 and 429 in statuses[5:], (name, statuses)
        refused = login(name, password(name))  # even the right password waits
        assert refused.status == 429 and int(refused.headers["retry-after"]) >= 1
        assert "too many failed logins" in refused.detail
        if name == "victim":  # after the wait, the right password works at once
            time.sleep(int(refused.headers["retry-after"]) + 0.5)
            assert login(name, password(name)).status == 200


@pytest.mark.timeout(600)
def test_file_paths_are_shown_to_admins_only(hostile):
    h = hostile
    url, image = h["url"], h["cases"][0]
    for route in (
        f"/datastore/image/info?image={image}",
        f"/datastore/label/info?label={image}&tag=final",
        "/datastore/?output=train",
    ):
        user = call("GET", f"{url}{route}", headers=bearer(h["tokens"]["user"]))
        assert (
            user.status == 200 and str(h["root"]) not in user.body.decode() and '"/' not in user.body.decode()
        ), route
    admin = call("GET", f"{url}/datastore/image/info?image={image}", headers=bearer(h["tokens"]["admin"]))
    assert "path" in admin.json()


# --- 4. atomic writes ------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_label_read_while_it_is_rewritten_is_always_whole(hostile):
    h = hostile
    url, annotator, user = h["url"], bearer(h["tokens"]["annotator"]), bearer(h["tokens"]["user"])
    image = h["cases"][1]
    label = label_bytes(h, image)
    errors: list[str] = []
    stop = threading.Event()

    def submit() -> None:
        for _ in range(6):
            answer = call(
                "PUT",
                f"{url}/datastore/label?image={image}",
                files={"label": ("l.nii.gz", label)},
                headers=annotator,
            )
            if answer.status != 200:
                errors.append(f"submit {answer.status}")

    def read() -> None:
        while not stop.is_set():
            try:
                answer = call("GET", f"{url}/datastore/label?label={image}&tag=final", headers=user)
                assert answer.status == 200 and len(answer.body) > 0
                nib.Nifti1Image.from_bytes(gzip.decompress(answer.body))
            except Exception as exc:  # noqa: BLE001 - any unreadable answer is a failure
                errors.append(f"read: {type(exc).__name__}: {exc}")

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=submit) for _ in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []


# --- 5. the DICOMweb proxy -------------------------------------------------------------------------


class _StandIn(BaseHTTPRequestHandler):
    """A DICOMweb host that records every request reaching it and answers 200 to everything."""

    seen: list[tuple[str, str, dict[str, str]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        type(self).seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = b"[]"
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Set-Cookie", "pacs=1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815 - the http.server API

    def log_message(self, *args) -> None:
        pass


def proxied_requests() -> list[tuple[str, str, dict[str, str]]]:
    """What reached the stand-in PACS, less the datastore's own listing of series (it re-lists them)."""
    return [r for r in _StandIn.seen if not (r[0] == "GET" and r[1].startswith("/dicom-web/series"))]


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, hostile):
    pacs = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    threading.Thread(target=pacs.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("proxy")
    users = root / "users.json"
    for name in ("user", "annotator"):
        add_user(users, name, name, password(name))
    env = {**auth_environment(str(users), None, 60.0), "MEDSEG_SERVE_AUTH_SECRET": SECRET}
    studies = f"http://127.0.0.1:{pacs.server_address[1]}/dicom-web"
    prepared = prepare_workdir(root / "work", studies, discover_bundles(REPO_ROOT / "bundles", [BUNDLE]))
    server = LabelServer(label_python(), prepared, log=root / "server.log", infer_workers=1, extra_env=env)
    server.start()
    try:
        assert server.wait_ready(timeout=420) == {}
        yield {"url": server.url, "tokens": {n: token(server.url, n) for n in ("user", "annotator")}}
    finally:
        server.stop()
        pacs.shutdown()


@pytest.mark.timeout(600)
def test_the_proxy_reaches_nothing_but_dicomweb(proxied):
    url, user = proxied["url"], bearer(proxied["tokens"]["user"])
    attacks = [
        ("POST", "/proxy/dicom/wado/../../tools/shutdown"),
        ("POST", "/proxy/dicom/wado/..%2f..%2ftools/shutdown"),
        ("POST", "/proxy/dicom/wado/%2e%2e/%2e%2e/tools/shutdown"),
        ("POST", "/proxy/dicom/wado/%2E%2E/%2E%2E/tools/execute-script"),
        ("GET", "/proxy/dicom/wado/../../../system"),
        ("GET", "/proxy/dicom/qido/..%5c..%5csystem"),
        ("GET", "/proxy/dicom/wado/system"),
        ("GET", "/proxy/dicom/wado/tools/shutdown"),
        ("POST", "/proxy/dicom/qido/studies"),
        ("GET", "/proxy/dicom/stow/studies"),
        ("GET", "/proxy/dicom/modalities/pacs/store"),
        ("GET", "/proxy/dicom/../../system"),
    ]
    _StandIn.seen.clear()
    for method, target in attacks:
        status, text = raw_request(url, method, target, {**user, "Content-Type": "application/json"}, b"{}")
        assert 400 <= status < 500, (target, status, text[:200])
    assert proxied_requests() == [], proxied_requests()  # not one request reached the PACS
    # a user's search goes through, with the server's credentials and none of the client's
    status, text = raw_request(
        url, "GET", "/proxy/dicom/qido/studies?limit=5&PatientID=x", {**user, "Cookie": "medseg_session=abc"}
    )
    assert status == 200 and text == "[]"
    ((method, path, headers),) = proxied_requests()
    assert (method, path) == ("GET", "/dicom-web/studies?limit=5&PatientID=x")
    assert "authorization" not in headers and "cookie" not in headers
    # a store needs the annotator role, and goes only to STOW-RS
    assert raw_request(url, "POST", "/proxy/dicom/stow/studies", user, b"--x--")[0] == 403
    _StandIn.seen.clear()
    annotator = bearer(proxied["tokens"]["annotator"])
    status, _ = raw_request(
        url,
        "POST",
        "/proxy/dicom/stow/studies",
        {**annotator, "Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
        b"--x--",
    )
    assert status == 200
    ((method, path, headers),) = proxied_requests()
    assert (method, path) == ("POST", "/dicom-web/studies") and "authorization" not in headers
