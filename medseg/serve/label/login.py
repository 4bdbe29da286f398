"""The open routes of ``medseg serve``'s login: ``GET /auth/``, ``POST /auth/token``, the login page
(MONAI Label venv only).

3D Slicer and ``MONAILabelClient`` log in with the OAuth2 password flow (``POST /auth/token``);
browsers (OHIF sends no ``Authorization`` header) use the page ``/auth/login``, which sets an
HttpOnly, SameSite=Strict session cookie. Both go through :class:`medseg.serve.throttle.LoginThrottle`:
after a few failures per user name or per client address the answer is 429 with ``Retry-After``,
whether the name exists or not and whatever the password.
"""

# ruff: noqa: B008 - FastAPI declares form fields with Form() defaults
from __future__ import annotations

import html
import logging
import math
from typing import Any

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from monailabel.config import settings
from monailabel.endpoints.user.auth import User
from starlette.concurrency import run_in_threadpool

from medseg.serve.label.verifiers import AuthFailed, Realm, Verifier, current
from medseg.serve.throttle import LoginThrottle

__all__ = ["COOKIE", "PUBLIC", "auth_api", "current_user", "throttle"]

logger = logging.getLogger("medseg.serve.auth")

COOKIE = "medseg_session"
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
MAX_FIELD = 1024  # characters of a user name or password (bcrypt reads 72 bytes; realms limit too)

throttle = LoginThrottle()

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


def _login_page(
    next_path: str, error: str = "", status: int = 200, headers: dict | None = None
) -> HTMLResponse:
    body = _LOGIN_PAGE.format(error=html.escape(error), next=html.escape(_safe_next(next_path), quote=True))
    # no caching, and no framing of the password form by other sites (clickjacking)
    all_headers = {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "frame-ancestors 'none'",
        **(headers or {}),
    }
    return HTMLResponse(body, status_code=status, headers=all_headers)


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


async def _login(request: Request, username: str, password: str) -> tuple[str, float]:
    """A token for a user name and password, throttled (see the module docstring).

    Raises:
        AuthFailed: 401 wrong credentials, 429 (``retry_after`` set) while the back-off lasts,
            400 for absurdly long fields, 502/503 when the realm fails.
    """
    if len(username) > MAX_FIELD or len(password) > MAX_FIELD:
        raise AuthFailed(f"user name and password have at most {MAX_FIELD} characters", status=400)
    address = _client(request)
    wait = throttle.begin(username, address)
    if wait > 0:
        failed = AuthFailed(
            f"too many failed logins from this address or for this user name; try again in {math.ceil(wait)} s",
            status=429,
        )
        failed.retry_after = math.ceil(wait)
        raise failed
    verifier = current()
    token, ttl = await run_in_threadpool(
        verifier.login, username, password
    )  # bcrypt or the realm: off the loop
    throttle.succeeded(username, address)
    return token, ttl


def _refusal_headers(exc: AuthFailed) -> dict[str, str]:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else {}
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(retry)
    return headers


async def current_user(request: Request) -> User:
    """Replaces MONAI Label's ``get_current_user``: the user the access guard verified for this request."""
    user = getattr(request.state, "medseg_user", None)
    if user is None:
        raise HTTPException(status_code=401, detail="not logged in", headers={"WWW-Authenticate": "Bearer"})
    return user


@auth_api.get("/auth/")
async def auth_info() -> dict[str, Any]:
    """Tells 3D Slicer and ``MONAILabelClient`` to ask for a login."""
    verifier: Verifier = current()
    return {
        "enabled": True,
        "client_id": verifier.client_id
        if isinstance(verifier, Realm)
        else settings.MONAI_LABEL_AUTH_CLIENT_ID,
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
    """OAuth2 password flow: ``{"access_token": ..., "token_type": "bearer"}``, or 401 / 429."""
    if grant_type not in (None, "", "password"):
        return JSONResponse(
            {"error": "unsupported_grant_type", "detail": "only grant_type=password"}, status_code=400
        )
    try:
        token, ttl = await _login(request, username, password)
    except AuthFailed as exc:
        logger.warning("token refused for %r from %s: %s", username[:64], _client(request), exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=_refusal_headers(exc))
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
        token, ttl = await _login(request, username, password)
    except AuthFailed as exc:
        logger.warning(
            "browser login refused for %r from %s: %s", username[:64], _client(request), exc.detail
        )
        headers = {k: v for k, v in _refusal_headers(exc).items() if k == "Retry-After"}
        return _login_page(next, error=exc.detail, status=exc.status, headers=headers)
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
