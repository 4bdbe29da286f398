"""The access guard of ``medseg serve``: every request needs a token and a role (MONAI Label venv only).

:func:`protect` wraps the server's ASGI app. With a login mode configured
(:mod:`medseg.serve.label.verifiers`), every request needs a valid token (``Authorization: Bearer``,
or the session cookie that the login page of :mod:`medseg.serve.label.login` sets for browsers) -
no or a bad token answers 401 - and the role that :func:`required_role` names for it - else 403.
Only the login routes (:data:`medseg.serve.label.login.PUBLIC`) are open. Roles nest (admin >
reviewer > annotator > user); a token is taken to carry every role its roles imply. A
state-changing request authenticated by the cookie must come from the server's own origin (the
cookie is not sent cross-site, and this also stops other ports of the same host). Without a mode
nothing changes.
"""

from __future__ import annotations

import contextlib
import html
import logging
import re
import urllib.parse
from typing import Any

import jwt
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response
from monailabel.endpoints.user import auth as stock_auth
from monailabel.endpoints.user.auth import User
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from medseg.serve.label.login import COOKIE, PUBLIC, auth_api, current_user
from medseg.serve.label.verifiers import AuthFailed, Verifier, current
from medseg.serve.users import ROLE_PREFIX

__all__ = ["RULES", "protect", "required_role"]

logger = logging.getLogger("medseg.serve.auth")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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
        ("POST PUT DELETE PATCH", r"^/proxy(/|$)", "annotator"),  # STOW-RS: store on the DICOMweb server
        ("GET HEAD POST PUT DELETE PATCH OPTIONS", r"^/logs(/|$)", "admin"),
        ("POST DELETE", r"^/batch(/|$)", "admin"),
        ("POST", r"^/reload/?$", "admin"),
    )
)


def required_role(method: str, path: str) -> str:
    """The least role (one of :data:`medseg.serve.users.ROLES`) a request for ``method path`` needs."""
    for methods, pattern, role in RULES:
        if method in methods and pattern.match(path):
            return role
    return "user" if method in SAFE_METHODS else "admin"


async def _verify(verifier: Verifier, token: str) -> User:
    """The token's user, off the event loop when the verifier waits (the realm's network)."""
    return await run_in_threadpool(verifier.verify, token) if verifier.blocking else verifier.verify(token)


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


def _stock_from_token(token: str) -> User:
    """MONAI Label's token check, done by medseg (for a stock guard reached without :func:`protect`)."""
    verifier = current()
    if verifier is None:
        return stock_auth.DEFAULT_USER
    try:
        return verifier.verify(token)
    except AuthFailed as exc:
        raise jwt.InvalidTokenError(exc.detail) from None


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
                current()
            await inner(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        try:
            verifier = current()
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
        user = await _verify(verifier, token)
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
