"""Login and access control of ``medseg serve`` (MONAI Label venv only).

MONAI Label 0.8.5 has role guards on its routes (``RBAC(...)`` with ``monailabel-admin|reviewer|
annotator|user``) and an OAuth2 password flow (``POST /auth/token``) that 3D Slicer and
``MONAILabelClient`` use, but its own token check cannot work here: it calls ``jwt.decode``
without ``algorithms``, which PyJWT 2 rejects for every token, and a wrong Keycloak password
becomes a 500. So medseg verifies tokens itself and keeps MONAI Label's claim and role names
(``preferred_username``, ``realm_access.roles``), so that the stock guards still mean what they say.

Two modes, chosen by the environment that ``medseg serve`` sets:

* ``MEDSEG_SERVE_USERS=USERS.json``: the local user store (:mod:`medseg.serve.users`); tokens are
  HS256 JWTs signed with a per-server secret (``MEDSEG_SERVE_AUTH_SECRET``, else random at start:
  restarting the server logs everyone out) that expire after ``MEDSEG_SERVE_TOKEN_MINUTES``;
* ``MEDSEG_SERVE_AUTH_REALM=URL``: a Keycloak/OIDC realm: its discovery document names the JWKS
  (RS256 keys) and the token endpoint, to which ``POST /auth/token`` forwards the password grant.

:func:`protect` wraps the server's ASGI app. With a mode configured, every request needs a valid
token (``Authorization: Bearer``, or the HttpOnly, SameSite=Strict session cookie that the login
page ``/auth/login`` sets for browsers: OHIF sends no Authorization header) - no or a bad token
answers 401 - and the role that :func:`required_role` names for it - else 403. Only ``GET /auth/``,
``POST /auth/token`` and the login page are open. Roles nest (admin > reviewer > annotator >
user); a token is taken to carry every role its roles imply. A state-changing request
authenticated by the cookie must come from the server's own origin (the cookie is not sent
cross-site, and this also stops other ports of the same host). Without a mode nothing changes.
"""

# ruff: noqa: B008 - FastAPI declares form fields with Form() defaults
from __future__ import annotations

import contextlib
import html
import logging
import os
import re
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from monailabel.config import settings
from monailabel.endpoints.user import auth as stock_auth
from monailabel.endpoints.user.auth import User
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from medseg.errors import ConfigError
from medseg.serve.users import ROLE_PREFIX, ROLES, UserRecord, load_users, role_claims, verify_password

__all__ = [
    "COOKIE",
    "AuthFailed",
    "LocalUsers",
    "Realm",
    "auth_api",
    "configure",
    "expand_roles",
    "protect",
    "required_role",
]

logger = logging.getLogger("medseg.serve.auth")

COOKIE = "medseg_session"
ISSUER = "medseg-serve"
USERS_ENV = "MEDSEG_SERVE_USERS"
REALM_ENV = "MEDSEG_SERVE_AUTH_REALM"
SECRET_ENV = "MEDSEG_SERVE_AUTH_SECRET"
MINUTES_ENV = "MEDSEG_SERVE_TOKEN_MINUTES"
DEFAULT_MINUTES = 60
MIN_SECRET_CHARS = 32
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# the open routes: login, and logout (it only clears the cookie)
PUBLIC = frozenset(
    {
        ("GET", "/auth/"),
        ("POST", "/auth/token"),
        ("GET", "/auth/login"),
        ("POST", "/auth/login"),
        ("POST", "/auth/logout"),
    }
)

# (methods, path pattern, least role); the first match wins. Unlisted: reads need "user", writes "admin".
RULES: tuple[tuple[frozenset[str], re.Pattern, str], ...] = tuple(
    (frozenset(methods.split()), re.compile(pattern), role)
    for methods, pattern, role in (
        ("POST PUT DELETE PATCH", r"^/train(/|$)", "admin"),  # train, stop training
        ("POST PUT DELETE PATCH", r"^/model(/|$)", "admin"),  # model files, /model/versions promote/roll back
        ("GET HEAD", r"^/model/versions(/|$)", "user"),  # the versions list
        ("GET HEAD", r"^/model(/|$)", "admin"),  # weights download (stock: admin)
        ("DELETE", r"^/datastore(/|$)", "admin"),  # delete images or labels
        ("PUT POST PATCH", r"^/datastore(/|$)", "annotator"),  # upload images, submit labels, label info
        ("GET HEAD", r"^/datastore/dataset(/|$)", "annotator"),  # the whole dataset as a ZIP (stock)
        ("POST", r"^/(infer|activelearning)(/|$)", "annotator"),  # infer, next sample
        ("PUT DELETE", r"^/session(/|$)", "annotator"),
        ("POST DELETE", r"^/scoring(/|$)", "annotator"),
        ("POST", r"^/proxy/dicom/(qido|wado)/", "user"),  # searches and reads (stock: user)
        ("POST", r"^/proxy(/|$)", "annotator"),  # stow: store on the DICOMweb server
        ("GET HEAD POST PUT DELETE PATCH OPTIONS", r"^/logs(/|$)", "admin"),
        ("POST DELETE", r"^/batch(/|$)", "admin"),
        ("POST", r"^/reload/?$", "admin"),
    )
)


class AuthFailed(Exception):
    """A login or a token was refused; ``status`` is the HTTP status to answer (401, or 502/503)."""

    def __init__(self, detail: str, status: int = 401) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def expand_roles(roles: Any) -> list[str]:
    """A token's roles plus every ``monailabel-*`` role they imply (admin > reviewer > annotator > user)."""
    names = {r for r in roles if isinstance(r, str)} if isinstance(roles, list) else set()
    ranks = [i for i, role in enumerate(ROLES) if ROLE_PREFIX + role in names]
    return sorted(names | {ROLE_PREFIX + role for role in ROLES[: max(ranks, default=-1) + 1]})


def required_role(method: str, path: str) -> str:
    """The least role (one of :data:`medseg.serve.users.ROLES`) a request for ``method path`` needs."""
    for methods, pattern, role in RULES:
        if method in methods and pattern.match(path):
            return role
    return "user" if method in SAFE_METHODS else "admin"


def _user_from_claims(payload: dict[str, Any]) -> User:
    username = payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME)
    if not isinstance(username, str) or not username:
        raise AuthFailed(f"the token has no {settings.MONAI_LABEL_AUTH_TOKEN_USERNAME} claim")
    roles: Any = payload
    for key in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):  # "realm_access#roles"
        roles = roles.get(key) if isinstance(roles, dict) else None
    return User(
        username=username,
        email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
        name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
        roles=expand_roles(roles or []),
    )


@dataclass
class LocalUsers:
    """The local user store: bcrypt passwords, HS256 tokens signed with the server's secret."""

    users: dict[str, UserRecord]
    secret: bytes
    minutes: float
    blocking = False

    def login(self, username: str, password: str) -> tuple[str, float]:
        """A token for ``username`` and its lifetime in seconds.

        Raises:
            AuthFailed: unknown user or wrong password (401).
        """
        record = verify_password(self.users, username, password)
        if record is None:
            raise AuthFailed("wrong user name or password")
        now = int(time.time())
        ttl = int(self.minutes * 60)
        claims = {
            "iss": ISSUER,
            "sub": record.name,
            settings.MONAI_LABEL_AUTH_TOKEN_USERNAME: record.name,
            "realm_access": {"roles": role_claims(record.role)},
            "iat": now,
            "exp": now + ttl,
        }
        return jwt.encode(claims, self.secret, algorithm="HS256"), ttl

    def verify(self, token: str) -> User:
        """The user of a valid token. Raises AuthFailed (401) for an expired, forged or malformed one."""
        try:
            payload = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("the token has expired; log in again") from None
        except jwt.InvalidTokenError as exc:
            raise AuthFailed(f"invalid token ({exc})") from None
        return _user_from_claims(payload)

    def describe(self) -> dict[str, Any]:
        return {"mode": "users"}


class Realm:
    """A Keycloak/OIDC realm: its discovery document, JWKS (RS256) and token endpoint.

    Args:
        url: the realm, e.g. ``https://keycloak.example.org/realms/monailabel``
            (``URL/.well-known/openid-configuration`` must answer).
        client_id: the realm's client for the password grant (``MONAI_LABEL_AUTH_CLIENT_ID``).
        timeout: seconds for each request to the realm.
    """

    blocking = True  # network calls: run off the event loop

    def __init__(self, url: str, client_id: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id
        self.timeout = timeout
        self._discovery: dict[str, Any] | None = None
        self._jwks: jwt.PyJWKClient | None = None

    def discovery(self) -> dict[str, Any]:
        """The realm's OpenID configuration (fetched once; again after a failure)."""
        if self._discovery is None:
            where = f"{self.url}/.well-known/openid-configuration"
            try:
                response = requests.get(where, timeout=self.timeout)
                response.raise_for_status()
                found = response.json()
                for key in ("issuer", "jwks_uri", "token_endpoint"):
                    if not isinstance(found.get(key), str):
                        raise ValueError(f"it has no {key}")
            except (requests.RequestException, ValueError) as exc:
                raise AuthFailed(f"the login realm cannot be reached ({where}: {exc})", status=503) from exc
            self._jwks = jwt.PyJWKClient(
                found["jwks_uri"], cache_keys=True, lifespan=300, timeout=int(self.timeout)
            )
            self._discovery = found
        return self._discovery

    def login(self, username: str, password: str) -> tuple[str, float]:
        """Forward the password grant to the realm; returns its access token and lifetime in seconds.

        Raises:
            AuthFailed: 401 when the realm refuses the credentials, 502/503 when it fails or cannot be reached.
        """
        endpoint = self.discovery()["token_endpoint"]
        data = {
            "client_id": self.client_id,
            "username": username,
            "password": password,
            "grant_type": "password",
        }
        try:
            response = requests.post(endpoint, data=data, timeout=self.timeout)
        except requests.RequestException as exc:
            raise AuthFailed(f"the login realm cannot be reached ({exc})", status=503) from exc
        if response.status_code in (400, 401, 403):
            raise AuthFailed("wrong user name or password")
        try:
            response.raise_for_status()
            token = response.json()["access_token"]
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise AuthFailed(
                f"the login realm answered {response.status_code} without a token", status=502
            ) from exc
        ttl = response.json().get("expires_in", 300)
        return token, float(ttl) if isinstance(ttl, int | float) else 300.0

    def verify(self, token: str) -> User:
        """The user of a token the realm signed (RS256, its issuer, not expired). Raises AuthFailed."""
        issuer = self.discovery()["issuer"]
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            payload = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                issuer=issuer,
                options={"verify_aud": False, "require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("the token has expired; log in again") from None
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthFailed(f"the login realm's keys cannot be fetched ({exc})", status=503) from None
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as exc:
            raise AuthFailed(f"invalid token ({exc})") from None
        return _user_from_claims(payload)

    def describe(self) -> dict[str, Any]:
        return {"mode": "realm", "realm": self.url}


Verifier = LocalUsers | Realm


def configure(environ: dict[str, str] | None = None) -> Verifier | None:
    """The verifier the environment asks for (see the module docstring), or None: no login.

    Raises:
        ConfigError: both modes, a bad users file, a short secret or a bad token lifetime.
    """
    env = os.environ if environ is None else environ
    users_file, realm = env.get(USERS_ENV, ""), env.get(REALM_ENV, "")
    if users_file and realm:
        raise ConfigError(f"{USERS_ENV} and {REALM_ENV} are both set; choose one login mode")
    if realm:
        return Realm(realm, settings.MONAI_LABEL_AUTH_CLIENT_ID, float(settings.MONAI_LABEL_AUTH_TIMEOUT))
    if not users_file:
        if settings.MONAI_LABEL_AUTH_ENABLE:
            raise ConfigError(
                f"MONAI_LABEL_AUTH_ENABLE is set: use {USERS_ENV} or {REALM_ENV} (medseg serve --users/--auth-realm)"
            )
        return None
    secret = env.get(SECRET_ENV, "")
    if secret and len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"{SECRET_ENV} must have at least {MIN_SECRET_CHARS} characters")
    try:
        minutes = float(env.get(MINUTES_ENV, DEFAULT_MINUTES))
    except ValueError:
        raise ConfigError(f"{MINUTES_ENV} must be a number of minutes") from None
    if not 0 < minutes <= 24 * 60:
        raise ConfigError(f"{MINUTES_ENV} must be between 0 and 1440 minutes")
    return LocalUsers(load_users(users_file), secret.encode() if secret else secrets.token_bytes(32), minutes)


_state: dict[str, Any] = {"configured": False, "verifier": None, "error": None}


def _verifier() -> Verifier | None:
    """The configured verifier (configured on first use); raises AuthFailed(503) after a configuration error."""
    if not _state["configured"]:
        _state["configured"] = True
        try:
            _state["verifier"] = configure()
        except (ConfigError, OSError) as exc:
            logger.error("login is misconfigured, refusing every request: %s", exc)
            _state["error"] = str(exc)
        if _state["verifier"] is not None:
            settings.MONAI_LABEL_AUTH_ENABLE = True  # the stock route guards check roles from now on
            logger.info("login required (%s)", _state["verifier"].describe())
    if _state["error"]:
        raise AuthFailed(f"login is misconfigured: {_state['error']}", status=503)
    return _state["verifier"]


async def _call(verifier: Verifier, method: str, *args: Any) -> Any:
    """``verifier.method(*args)``, off the event loop when it waits (bcrypt, the realm's network)."""
    func = getattr(verifier, method)
    return await run_in_threadpool(func, *args) if verifier.blocking or method == "login" else func(*args)


def _token(conn: HTTPConnection) -> tuple[str | None, bool]:
    """The request's token and whether it came from the session cookie."""
    scheme, _, value = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    cookie = conn.cookies.get(COOKIE)
    return (cookie, True) if cookie else (None, False)


def _same_origin(conn: HTTPConnection) -> bool:
    origin = conn.headers.get("origin")
    if origin is not None:
        return origin == f"{conn.url.scheme}://{conn.headers.get('host', '')}"
    return conn.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def _refusal(conn: HTTPConnection, status: int, detail: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if status == 401 and "text/html" in conn.headers.get("accept", ""):
        target = html.escape(f"/auth/login?next={urllib.parse.quote(conn.url.path)}", quote=True)
        body = (
            f'<!doctype html><title>Log in</title><p>{html.escape(detail)}. <a href="{target}">Log in</a></p>'
        )
        return HTMLResponse(body, status_code=status, headers=headers)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def current_user(request: Request) -> User:
    """Replaces MONAI Label's ``get_current_user``: the user :func:`protect` verified for this request."""
    user = getattr(request.state, "medseg_user", None)
    if user is None:
        raise HTTPException(status_code=401, detail="not logged in", headers={"WWW-Authenticate": "Bearer"})
    return user


def _stock_from_token(token: str) -> User:
    """MONAI Label's token check, done by medseg (for a stock guard reached without :func:`protect`)."""
    verifier = _verifier()
    if verifier is None:
        return stock_auth.DEFAULT_USER
    try:
        return verifier.verify(token)
    except AuthFailed as exc:
        raise jwt.InvalidTokenError(exc.detail) from None


# --- the open routes: GET /auth/, POST /auth/token, the login page -----------------------------------

auth_api = FastAPI(title="medseg login", openapi_url=None, docs_url=None, redoc_url=None)

_LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medseg serve - log in</title>
<style>body{{font-family:sans-serif;max-width:22em;margin:4em auto}}label,input,button{{display:block;width:100%;margin:.4em 0}}
.error{{color:#a00}}</style></head>
<body><h1>Log in</h1><p class="error">{error}</p>
<form method="post" action="/auth/login">
<label>User name <input name="username" autocomplete="username" required autofocus></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<input type="hidden" name="next" value="{next}"><button type="submit">Log in</button></form>
<p>Research use only, not for diagnosis.</p></body></html>
"""


def _safe_next(target: str) -> str:
    """Only a path on this server (no scheme, no ``//host``) may follow a login."""
    return (
        target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/ohif/"
    )


def _login_page(next_path: str, error: str = "", status: int = 200) -> HTMLResponse:
    body = _LOGIN_PAGE.format(error=html.escape(error), next=html.escape(_safe_next(next_path), quote=True))
    # no caching, and no framing of the password form by other sites (clickjacking)
    headers = {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "frame-ancestors 'none'",
    }
    return HTMLResponse(body, status_code=status, headers=headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


@auth_api.get("/auth/")
async def auth_info() -> dict[str, Any]:
    """Tells 3D Slicer and ``MONAILabelClient`` to ask for a login."""
    verifier = _verifier()
    return {
        "enabled": True,
        "client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID,
        "realm": verifier.url if isinstance(verifier, Realm) else None,
        "login_page": "/auth/login",
        **verifier.describe(),
    }


@auth_api.post("/auth/token")
async def auth_token(
    request: Request,
    username: str = Form(...),
    password: str = Form(...),
    grant_type: str | None = Form(None),
) -> JSONResponse:
    """OAuth2 password flow: ``{"access_token": ..., "token_type": "bearer"}``, or 401."""
    if grant_type not in (None, "", "password"):
        return JSONResponse(
            {"error": "unsupported_grant_type", "detail": "only grant_type=password"}, status_code=400
        )
    try:
        token, ttl = await _call(_verifier(), "login", username, password)
    except AuthFailed as exc:
        logger.warning("token refused for %r from %s: %s", username, _client(request), exc.detail)
        return JSONResponse(
            {"detail": exc.detail}, status_code=exc.status, headers={"WWW-Authenticate": "Bearer"}
        )
    logger.info("token issued to %r from %s", username, _client(request))
    return JSONResponse(
        {"access_token": token, "token_type": "bearer", "expires_in": int(ttl)},
        headers={"Cache-Control": "no-store"},
    )


@auth_api.get("/auth/login")
async def login_page(next: str = "/ohif/") -> HTMLResponse:  # noqa: A002 - the query parameter's name
    return _login_page(next)


@auth_api.post("/auth/login")
async def login_form(
    request: Request,
    username: str = Form(...),
    password: str = Form(...),
    next: str = Form("/ohif/"),  # noqa: A002
) -> Response:
    """Checks the password and sets the session cookie (HttpOnly, SameSite=Strict), then goes to ``next``."""
    try:
        token, ttl = await _call(_verifier(), "login", username, password)
    except AuthFailed as exc:
        logger.warning("browser login refused for %r from %s: %s", username, _client(request), exc.detail)
        return _login_page(next, error=exc.detail, status=exc.status)
    logger.info("browser login of %r from %s", username, _client(request))
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(ttl),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@auth_api.post("/auth/logout")
async def logout() -> Response:
    response = RedirectResponse("/auth/login", status_code=303)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@auth_api.get("/auth/token/valid")
async def token_valid(request: Request) -> dict[str, Any]:
    """The logged-in user (MONAI Label's route); reached only with a valid token."""
    return (await current_user(request)).model_dump()


# --- the gate -----------------------------------------------------------------------------------------


def _install_overrides(apps: tuple[FastAPI, ...]) -> None:
    for app in apps:
        app.dependency_overrides[stock_auth.get_current_user] = current_user
    stock_auth.from_token = _stock_from_token  # the stock check calls jwt.decode without algorithms


def protect(inner: Any, *apps: FastAPI) -> Any:
    """The ASGI app ``inner`` behind the login (see the module docstring).

    Args:
        inner: the server's ASGI app.
        apps: FastAPI apps whose MONAI Label role guards (``RBAC``) get the user verified here.
    """
    installed = []

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            with contextlib.suppress(AuthFailed):  # configure at start-up: errors are logged now
                _verifier()
            await inner(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        try:
            verifier = _verifier()
        except AuthFailed as exc:
            await _answer(scope, receive, send, _refusal(conn, exc.status, exc.detail))
            return
        if verifier is None:
            await inner(scope, receive, send)
            return
        if not installed:
            _install_overrides(apps)
            installed.append(True)
        method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
        path = scope.get("path", "/")
        path = "/auth/" if path == "/auth" else path
        if (method, path) in PUBLIC:
            await auth_api(scope, receive, send)
            return
        refusal = await _check(conn, verifier, method, path)
        if refusal is not None:
            await _answer(scope, receive, send, refusal)
            return
        await (auth_api if path == "/auth/token/valid" else inner)(scope, receive, send)

    return guarded


async def _check(conn: HTTPConnection, verifier: Verifier, method: str, path: str) -> Response | None:
    """None when the request may go on (its user is put in ``scope["state"]``), else the refusal."""
    token, from_cookie = _token(conn)
    if token is None:
        return _refusal(conn, 401, "log in first: POST /auth/token, or the login page /auth/login")
    try:
        user = await _call(verifier, "verify", token)
    except AuthFailed as exc:
        return _refusal(conn, exc.status, exc.detail)
    need = required_role(method, path)
    if ROLE_PREFIX + need not in user.roles:
        logger.warning("%s %s refused for %r: needs %s", method, path, user.username, need)
        return _refusal(conn, 403, f'role "{ROLE_PREFIX + need}" is required for {method} {path}')
    if from_cookie and method not in SAFE_METHODS and not _same_origin(conn):
        return _refusal(conn, 403, "a request with the session cookie must come from this server's own pages")
    conn.scope.setdefault("state", {})["medseg_user"] = user
    return None


async def _answer(scope: dict[str, Any], receive: Any, send: Any, response: Response) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await response(scope, receive, send)
