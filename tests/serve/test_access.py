"""What ``medseg serve`` refuses before it starts a server (:mod:`medseg.serve.access`).

A non-loopback ``--host`` without a login (unless ``--insecure-no-auth``), ``--users`` with a file
others can read, an unreachable ``--auth-realm``, half a TLS configuration; and what it passes on.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from medseg.cli.main import main
from medseg.errors import ConfigError
from medseg.serve.access import auth_environment, check_bind, check_realm, check_tls, is_loopback
from medseg.serve.launcher import LabelServer
from medseg.serve.users import add_user


def test_loopback_addresses():
    assert (
        is_loopback("127.0.0.1")
        and is_loopback("127.0.0.2")
        and is_loopback("::1")
        and is_loopback("localhost")
    )
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20") and not is_loopback("::")


def test_a_non_loopback_host_needs_a_login():
    check_bind("127.0.0.1", login=False, insecure_no_auth=False)
    check_bind("0.0.0.0", login=True, insecure_no_auth=False)
    check_bind("0.0.0.0", login=False, insecure_no_auth=True)
    with pytest.raises(ConfigError, match="--insecure-no-auth"):
        check_bind("0.0.0.0", login=False, insecure_no_auth=False)


def test_serve_refuses_an_open_host_before_doing_anything(tmp_path: Path, capsys):
    code = main(["serve", "--host", "0.0.0.0", "--workdir", str(tmp_path / "work"), "--prepare-only"])
    assert code == 2
    err = capsys.readouterr().err
    assert "without a login" in err and "--users" in err and "--insecure-no-auth" in err
    assert not (tmp_path / "work").exists()


def test_serve_refuses_a_readable_users_file_and_half_tls(tmp_path: Path, capsys):
    users = tmp_path / "users.json"
    add_user(users, "alice", "admin", "a-long-password")
    os.chmod(users, 0o644)
    assert main(["serve", "--users", str(users), "--workdir", str(tmp_path / "w"), "--prepare-only"]) == 2
    assert f"chmod 600 {users}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="both"):
        check_tls(str(users), None)
    with pytest.raises(ConfigError, match="does not exist"):
        check_tls(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


def test_auth_environment_for_each_mode(tmp_path: Path):
    users = tmp_path / "users.json"
    add_user(users, "alice", "admin", "a-long-password")
    env = auth_environment(str(users), None, 15)
    assert env["MEDSEG_SERVE_USERS"] == str(users.resolve()) and env["MONAI_LABEL_AUTH_ENABLE"] == "true"
    assert env["MEDSEG_SERVE_TOKEN_MINUTES"] == "15" and env["MEDSEG_SERVE_AUTH_REALM"] == ""
    off = auth_environment(None, None, 60)
    assert off["MONAI_LABEL_AUTH_ENABLE"] == "false" and off["MEDSEG_SERVE_USERS"] == ""
    with pytest.raises(ConfigError, match="exclude"):
        auth_environment(str(users), "http://127.0.0.1:1/realms/x", 60)
    with pytest.raises(ConfigError, match="--token-minutes"):
        auth_environment(str(users), None, 0)


class _Discovery(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - the http.server API
        ok = self.path == "/realms/lab/.well-known/openid-configuration"
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(self.body if ok else b"{}")

    def log_message(self, *args):
        pass


@pytest.mark.timeout(60)
def test_realm_discovery_is_checked(tmp_path: Path):
    doc = {"issuer": "x", "jwks_uri": "http://127.0.0.1/certs", "token_endpoint": "http://127.0.0.1/token"}
    _Discovery.body = json.dumps(doc).encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert check_realm(f"{base}/realms/lab/") == doc
        env = auth_environment(None, f"{base}/realms/lab", 60)
        assert (
            env["MEDSEG_SERVE_AUTH_REALM"] == f"{base}/realms/lab"
            and env["MONAI_LABEL_AUTH_ENABLE"] == "true"
        )
        with pytest.raises(ConfigError, match="discovery document"):
            check_realm(f"{base}/realms/other")
        with pytest.raises(ConfigError, match="http"):
            check_realm("keycloak.example.org/realms/lab")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_host_and_tls_reach_the_server_command(tmp_path: Path):
    from medseg.serve.workdir import PreparedWorkdir

    prepared = PreparedWorkdir(tmp_path, tmp_path / "app", str(tmp_path / "ds"), ["b"])
    server = LabelServer(
        "python", prepared, port=8443, host="0.0.0.0", ssl_certfile="c.pem", ssl_keyfile="k.pem"
    )
    assert server.url == "https://127.0.0.1:8443"  # probed on loopback
    command = server.command()
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--ssl_certfile") + 1] == "c.pem"
    assert command[command.index("--ssl_keyfile") + 1] == "k.pem"
    plain = LabelServer("python", prepared, port=8000).command()
    assert plain[plain.index("--host") + 1] == "127.0.0.1" and "--ssl_certfile" not in plain
