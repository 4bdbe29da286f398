"""``medseg serve --users USERS.json --ssl-certfile ... --ssl-keyfile ...`` as a user runs it.

The command checks the users file, starts the server with HTTPS (a self-signed certificate made
by the test with ``openssl``), prints the ready URL although ``/info/`` needs a login, and every
route then needs a token; the browser cookie is marked Secure over HTTPS. Stops on SIGTERM.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from support.serve import fold_cases, hippocampus_bundles, label_python, make_msd_studies

from medseg.serve.launcher import free_port
from medseg.serve.users import add_user

pytestmark = [pytest.mark.slow, pytest.mark.needs_data, pytest.mark.needs_label_venv]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed (Debian: apt-get install openssl)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def https(
    port: int, cert: Path, method: str, path: str, body: str | None = None, headers: dict | None = None
):
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("set-cookie"), response.read()
    finally:
        conn.close()


@pytest.mark.timeout(900)
def test_serve_with_users_over_https(hippocampus_dir: Path, tmp_path: Path):
    cert, key = self_signed(tmp_path)
    users = tmp_path / "users.json"
    add_user(users, "nurse", "annotator", "nurse-password-1")
    studies = make_msd_studies(hippocampus_dir, tmp_path / "studies", fold_cases(hippocampus_dir, 1)[:2])
    port = free_port()
    env = dict(os.environ, MEDSEG_LABEL_PYTHON=str(label_python()))
    command = [sys.executable, "-m", "medseg", "serve", "--studies", str(studies), "--port", str(port),
               "--workdir", str(tmp_path / "work"), "--log", str(tmp_path / "server.log"),
               "--bundles", hippocampus_bundles()[0], "--users", str(users),
               "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, lines, ready = time.monotonic() + 600, [], None
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            lines.append(line)
            match = re.search(r"ready at (https://127\.0\.0\.1:\d+)/", line)
            if match:
                ready = match.group(1)
                break
        assert ready == f"https://127.0.0.1:{port}", "".join(lines)[-3000:]
        assert https(port, cert, "GET", "/info/")[0] == 401
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        login = urllib.parse.urlencode({"username": "nurse", "password": "nurse-password-1"})
        status, _, body = https(port, cert, "POST", "/auth/token", login, form)
        assert status == 200
        token = json.loads(body)["access_token"]
        status, _, body = https(port, cert, "GET", "/info/", headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and hippocampus_bundles()[0] in json.loads(body)["models"]
        status, cookie, _ = https(port, cert, "POST", "/auth/login", login, form)
        assert status == 303 and "secure" in [a.strip().lower() for a in cookie.split(";")]
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            plain.request("GET", "/info/")
            answered = plain.getresponse().status
        except (OSError, http.client.HTTPException):
            answered = None
        finally:
            plain.close()
        assert answered is None  # no plain HTTP on the TLS port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
