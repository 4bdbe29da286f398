"""The login of ``medseg serve``: a real server with a users file, and one with a (stand-in) OIDC realm.

Each role (``user``, ``annotator``, ``reviewer``, ``admin``) and no token at all against info, infer,
submit label, train, stop training, delete and model upload; bad passwords, expired and forged
tokens; every route closed without a token; the browser login cookie; MONAI Label's own client.
The realm is ``tests/support/oidc_realm.py`` (discovery, JWKS and password grant, RSA key made at
start) run in the MONAI Label venv. Admin requests that must not change the served model are sent
so that they fail after the login check (422 without a file, 404 for an unknown model).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest
from support.serve import REPO_ROOT, call, fold_cases, hippocampus_bundles, label_python, make_msd_studies

from medseg.serve.access import auth_environment
from medseg.serve.launcher import LabelServer
from medseg.serve.users import add_user
from medseg.serve.workdir import discover_bundles, prepare_workdir

pytestmark = [pytest.mark.slow, pytest.mark.needs_data, pytest.mark.needs_label_venv]

ROLES = ("user", "annotator", "reviewer", "admin")
PASSWORD = {role: f"{role}-pass-{role[::-1]}" for role in ROLES}
SECRET = "test-secret-for-the-login-tests-0123456789abcdef"
REALM_SCRIPT = REPO_ROOT / "tests" / "support" / "oidc_realm.py"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256(claims: dict, secret: str) -> str:
    """A JWT signed with HMAC-SHA256 (RFC 7519), made without the server's code."""
    signing = (
        f"{_b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    )
    signature = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}"


def local_claims(user: str, roles: list[str], exp_in: float) -> dict:
    now = int(time.time())
    return {
        "iss": "medseg-serve",
        "preferred_username": user,
        "realm_access": {"roles": roles},
        "iat": now,
        "exp": now + int(exp_in),
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def get_token(url: str, username: str, password: str, **extra: str):
    body = urllib.parse.urlencode({"username": username, "password": password, **extra}).encode()
    return call("POST", f"{url}/auth/token", data=body, content_type="application/x-www-form-urlencoded")


def post_form_no_redirect(url: str, path: str, form: dict[str, str]) -> http.client.HTTPResponse:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request(
        "POST", path, urllib.parse.urlencode(form), {"Content-Type": "application/x-www-form-urlencoded"}
    )
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def _start(
    root: Path, hippocampus_dir: Path, cases: list[str], env: dict[str, str]
) -> tuple[LabelServer, str]:
    studies = make_msd_studies(hippocampus_dir, root / "studies", cases)
    bundle = hippocampus_bundles()[0]
    prepared = prepare_workdir(root / "work", str(studies), discover_bundles(REPO_ROOT / "bundles", [bundle]))
    server = LabelServer(label_python(), prepared, log=root / "server.log", infer_workers=1, extra_env=env)
    return server, bundle


@pytest.fixture(scope="module")
def cases(hippocampus_dir: Path) -> list[str]:
    return fold_cases(hippocampus_dir, 1)[:3]  # never fold 0 (the test fold)


@pytest.fixture(scope="module")
def local(tmp_path_factory, hippocampus_dir: Path, cases):
    root = tmp_path_factory.mktemp("auth-local")
    users = root / "users.json"
    for role in ROLES:
        add_user(users, role, role, PASSWORD[role])
    env = {**auth_environment(str(users), None, 60.0), "MEDSEG_SERVE_AUTH_SECRET": SECRET}
    server, bundle = _start(root, hippocampus_dir, cases, env)
    server.start()
    try:
        assert server.wait_ready(timeout=420) == {}  # /info/ answers 401: the server is up, login required
        tokens = {role: get_token(server.url, role, PASSWORD[role]).json()["access_token"] for role in ROLES}
        yield {"url": server.url, "bundle": bundle, "tokens": tokens, "server": server, "root": root}
    finally:
        server.stop()
        assert server.process.poll() is not None


@pytest.mark.timeout(900)
def test_auth_info_and_token_endpoint(local):
    url = local["url"]
    info = call("GET", f"{url}/auth/")
    assert info.status == 200 and info.json()["enabled"] is True and info.json()["mode"] == "users"
    good = get_token(url, "annotator", PASSWORD["annotator"], grant_type="password")
    assert good.status == 200 and good.json()["token_type"] == "bearer"
    assert call("GET", f"{url}/info/", headers=bearer(good.json()["access_token"])).status == 200
    assert get_token(url, "annotator", PASSWORD["admin"]).status == 401  # another user's password
    assert get_token(url, "nobody", PASSWORD["admin"]).status == 401
    assert get_token(url, "annotator", PASSWORD["annotator"], grant_type="client_credentials").status == 400
    valid = call("GET", f"{url}/auth/token/valid", headers=bearer(local["tokens"]["reviewer"]))
    assert valid.status == 200 and valid.json()["username"] == "reviewer"
    assert set(valid.json()["roles"]) == {"monailabel-reviewer", "monailabel-annotator", "monailabel-user"}


@pytest.mark.timeout(900)
def test_every_route_needs_a_token(local):
    url = local["url"]
    closed = [
        ("GET", "/info/"),
        ("GET", "/"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/ohif/"),
        ("GET", "/static/favicon.ico"),
        ("GET", "/favicon.ico"),
        ("GET", "/proxy/dicom/qido/studies"),
        ("POST", "/reload"),
        ("GET", "/datastore/?output=all"),
        ("GET", "/train/"),
        ("GET", "/model/versions"),
        ("GET", "/logs/"),
        ("POST", f"/infer/{local['bundle']}"),
        ("GET", "/auth/token/valid"),
    ]
    for method, path in closed:
        response = call(method, url + path)
        assert response.status == 401, (method, path, response.status)
        assert response.headers.get("www-authenticate") == "Bearer"
        for token in (
            "not-a-jwt",
            hs256(local_claims("admin", ["monailabel-admin"], 300), "a-wrong-secret" * 3),
        ):
            assert call(method, url + path, headers=bearer(token)).status == 401, (method, path)
    login_page = call("GET", f"{url}/auth/login")
    assert login_page.status == 200 and b'type="password"' in login_page.body
    assert (
        login_page.headers["x-frame-options"] == "DENY" and login_page.headers["cache-control"] == "no-store"
    )
    browser = call("GET", f"{url}/ohif/", headers={"Accept": "text/html"})
    assert browser.status == 401 and b"/auth/login?next=/ohif/" in browser.body


@pytest.mark.timeout(900)
def test_expired_and_forged_tokens_are_refused(local):
    url = local["url"]
    admin = ["monailabel-admin", "monailabel-reviewer", "monailabel-annotator", "monailabel-user"]
    fresh = hs256(local_claims("admin", admin, 300), SECRET)
    assert call("GET", f"{url}/info/", headers=bearer(fresh)).status == 200  # the server's secret: accepted
    expired = hs256(local_claims("admin", admin, -5), SECRET)
    response = call("GET", f"{url}/info/", headers=bearer(expired))
    assert response.status == 401 and "expired" in response.detail
    forged = hs256(local_claims("admin", admin, 300), SECRET[::-1])
    assert call("GET", f"{url}/info/", headers=bearer(forged)).status == 401
    # a real annotator token with the payload changed to claim admin: the signature no longer matches
    head, _, sig = local["tokens"]["annotator"].split(".")
    escalated = f"{head}.{_b64(json.dumps(local_claims('annotator', admin, 300)).encode())}.{sig}"
    assert call("GET", f"{url}/info/", headers=bearer(escalated)).status == 401
    unsigned = f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(local_claims('admin', admin, 300)).encode())}."
    assert call("GET", f"{url}/info/", headers=bearer(unsigned)).status == 401
    # signed with the server's secret but valid for 10 years: longer than --token-minutes allows
    decade = call(
        "GET", f"{url}/info/", headers=bearer(hs256(local_claims("admin", admin, 10 * 365 * 86400), SECRET))
    )
    assert decade.status == 401 and "longer" in decade.detail


@pytest.mark.timeout(1200)
def test_role_matrix(local, hippocampus_dir: Path, cases):
    url, bundle, tokens = local["url"], local["bundle"], local["tokens"]
    case, victim = cases[0], cases[2]
    label = (hippocampus_dir / "labelsTr" / f"{case}.nii.gz").read_bytes()
    label_file = Path(local["server"].prepared.studies) / "labels" / "final" / f"{victim}.nii.gz"
    assert label_file.is_file()
    requests = {
        "info": lambda h: call("GET", f"{url}/info/", headers=h),
        "next sample": lambda h: call("POST", f"{url}/activelearning/random", json_body={}, headers=h),
        "infer": lambda h: call(
            "POST",
            f"{url}/infer/{bundle}?image={case}&output=json",
            fields={"params": "{}"},
            headers=h,
            timeout=600,
        ),
        "submit label": lambda h: call(
            "PUT",
            f"{url}/datastore/label?image={case}&tag=final",
            fields={"params": "{}"},
            files={"label": (f"{case}.nii.gz", label)},
            headers=h,
        ),
        "train": lambda h: call("POST", f"{url}/train/no-such-model", json_body={}, headers=h),
        "stop training": lambda h: call("DELETE", f"{url}/train/", headers=h),
        "model upload": lambda h: call("PUT", f"{url}/model/{bundle}", fields={"x": "no file"}, headers=h),
        "model delete": lambda h: call("DELETE", f"{url}/model/no-such-model", headers=h),
        "promote": lambda h: call(
            "POST", f"{url}/model/versions/no-such-model/promote", json_body={}, headers=h
        ),
        "delete label": lambda h: call("DELETE", f"{url}/datastore/label?id={victim}&tag=final", headers=h),
    }
    allowed = {
        "info": ROLES,
        "next sample": ROLES[1:],
        "infer": ROLES[1:],
        "submit label": ROLES[1:],
        "train": ("admin",),
        "stop training": ("admin",),
        "model upload": ("admin",),
        "model delete": ("admin",),
        "promote": ("admin",),
        "delete label": ("admin",),
    }
    seen = {}
    for what, send in requests.items():
        assert send({}).status == 401, what
        for role in ROLES:
            status = send(bearer(tokens[role])).status
            seen[what, role] = status
            if role in allowed[what]:
                assert status not in (401, 403), (what, role, status)
            else:
                assert status == 403, (what, role, status)
                if what == "delete label":
                    assert label_file.is_file()  # refused before anything was deleted
    assert seen["info", "user"] == seen["infer", "annotator"] == seen["submit label", "annotator"] == 200
    assert seen["train", "admin"] == 404 and seen["model upload", "admin"] == 422  # past the login, no change
    assert seen["delete label", "admin"] == 200 and not label_file.exists()


@pytest.mark.timeout(900)
def test_browser_login_sets_a_strict_httponly_cookie(local):
    url, bundle = local["url"], local["bundle"]
    wrong = post_form_no_redirect(url, "/auth/login", {"username": "annotator", "password": "wrong-password"})
    assert wrong.status == 401 and wrong.getheader("set-cookie") is None
    done = post_form_no_redirect(
        url,
        "/auth/login",
        {"username": "annotator", "password": PASSWORD["annotator"], "next": "https://evil.example/"},
    )
    assert done.status == 303 and done.getheader("location") == "/ohif/"  # no redirect off the server
    cookie = done.getheader("set-cookie")
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert "httponly" in attributes and "samesite=strict" in attributes and "path=/" in attributes
    session = {"Cookie": cookie.split(";")[0]}
    assert call("GET", f"{url}/ohif/", headers=session).status == 200
    assert call("GET", f"{url}/info/", headers=session).json()["models"]
    # state-changing requests with the cookie: only from the server's own pages
    own = {**session, "Origin": url}
    assert call("POST", f"{url}/infer/no-such-model", fields={"params": "{}"}, headers=own).status == 404
    other = {**session, "Origin": "http://127.0.0.1:1"}
    assert call("POST", f"{url}/infer/{bundle}", fields={"params": "{}"}, headers=other).status == 403
    assert call("POST", f"{url}/train/no-such-model", json_body={}, headers=own).status == 403  # annotator
    tampered = {"Cookie": session["Cookie"][:-2] + "xx"}
    assert call("GET", f"{url}/info/", headers=tampered).status == 401


@pytest.mark.timeout(900)
def test_cors_allows_no_other_origin(local):
    headers = {**bearer(local["tokens"]["user"]), "Origin": "http://example.org"}
    response = call("GET", f"{local['url']}/info/", headers=headers)
    assert response.status == 200 and "access-control-allow-origin" not in response.headers


@pytest.mark.timeout(900)
def test_monailabel_client_logs_in(local):
    script = (
        "import sys; from monailabel.client import MONAILabelClient\n"
        "c = MONAILabelClient(sys.argv[1])\n"
        "assert c.auth_enabled()\n"
        "c.update_auth(c.auth_token('annotator', sys.argv[2]))\n"
        "assert c.auth_valid_token()\n"
        "print(sorted(c.info()['models']))\n"
    )
    proc = subprocess.run(
        [str(label_python()), "-c", script, local["url"], PASSWORD["annotator"]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert local["bundle"] in proc.stdout


# --- an OIDC realm --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realm():
    users = {
        "anna": ["anna-pass-1234", ["monailabel-annotator"]],  # Keycloak without composite roles
        "root": ["root-pass-1234", ["monailabel-admin"]],
    }
    proc = subprocess.Popen(
        [str(label_python()), str(REALM_SCRIPT), json.dumps(users)], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        yield {
            "url": f"http://127.0.0.1:{port}/realms/test",
            "base": f"http://127.0.0.1:{port}",
            "users": users,
        }
    finally:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def realm_server(tmp_path_factory, hippocampus_dir: Path, cases, realm):
    root = tmp_path_factory.mktemp("auth-realm")
    server, bundle = _start(root, hippocampus_dir, cases[:2], auth_environment(None, realm["url"], 60.0))
    server.start()
    try:
        assert server.wait_ready(timeout=420) == {}
        yield {"url": server.url, "bundle": bundle}
    finally:
        server.stop()
        assert server.process.poll() is not None


def _mint(realm, user: str, roles: str, exp: float, forge: bool = False, client: str = "monailabel") -> str:
    query = urllib.parse.urlencode(
        {"user": user, "roles": roles, "exp": exp, "forge": int(forge), "client": client}
    )
    return call("GET", f"{realm['base']}/mint?{query}").json()["access_token"]


@pytest.mark.timeout(900)
def test_realm_login_and_roles(realm_server, realm):
    url = realm_server["url"]
    info = call("GET", f"{url}/auth/").json()
    assert info["enabled"] is True and info["realm"] == realm["url"]
    assert get_token(url, "anna", "wrong-password").status == 401  # the realm's 401, not a 500
    anna = get_token(url, "anna", realm["users"]["anna"][0])
    assert anna.status == 200 and anna.json()["token_type"] == "bearer"
    annotator = bearer(anna.json()["access_token"])
    assert call("GET", f"{url}/info/", headers=annotator).status == 200
    assert (
        call("POST", f"{url}/infer/no-such-model", fields={"params": "{}"}, headers=annotator).status == 404
    )
    assert call("POST", f"{url}/train/no-such-model", json_body={}, headers=annotator).status == 403
    root = bearer(get_token(url, "root", realm["users"]["root"][0]).json()["access_token"])
    assert call("POST", f"{url}/train/no-such-model", json_body={}, headers=root).status == 404
    # admin implies annotator even when the realm does not say so
    assert call("POST", f"{url}/infer/no-such-model", fields={"params": "{}"}, headers=root).status == 404
    assert call("GET", f"{url}/info/").status == 401


@pytest.mark.timeout(900)
def test_realm_refuses_expired_and_forged_tokens(realm_server, realm):
    url = realm_server["url"]
    assert (
        call("GET", f"{url}/info/", headers=bearer(_mint(realm, "anna", "monailabel-admin", 300))).status
        == 200
    )
    expired = call("GET", f"{url}/info/", headers=bearer(_mint(realm, "anna", "monailabel-admin", -30)))
    assert expired.status == 401 and "expired" in expired.detail
    forged = _mint(realm, "anna", "monailabel-admin", 300, forge=True)
    assert call("GET", f"{url}/info/", headers=bearer(forged)).status == 401
    no_role = bearer(_mint(realm, "anna", "", 300))
    assert call("GET", f"{url}/info/", headers=no_role).status == 403


@pytest.mark.timeout(900)
def test_realm_tokens_of_other_clients_or_lifetimes_are_refused(realm_server, realm):
    """The realm signs tokens for every application it serves: only those issued to medseg's client
    (``--auth-client-id``, default monailabel) open the server, and none that lives too long."""
    url = realm_server["url"]
    ours = call("GET", f"{url}/info/", headers=bearer(_mint(realm, "anna", "monailabel-admin", 300)))
    assert ours.status == 200
    other = call(
        "GET",
        f"{url}/info/",
        headers=bearer(_mint(realm, "anna", "monailabel-admin", 300, client="pacs-web")),
    )
    assert other.status == 401 and "another application" in other.detail
    unnamed = call(
        "GET", f"{url}/info/", headers=bearer(_mint(realm, "anna", "monailabel-admin", 300, client=""))
    )
    assert unnamed.status == 401
    decade = call(
        "GET", f"{url}/info/", headers=bearer(_mint(realm, "anna", "monailabel-admin", 10 * 365 * 86400))
    )
    assert decade.status == 401 and "longer" in decade.detail
