"""Who a token belongs to: the two login modes of ``medseg serve`` (MONAI Label venv only).

MONAI Label 0.8.5's own token check cannot work (it calls ``jwt.decode`` without ``algorithms``,
which PyJWT 2 rejects for every token, and a wrong Keycloak password becomes a 500), so medseg
verifies tokens here and keeps MONAI Label's claim and role names (``preferred_username``,
``realm_access.roles``), so that the stock route guards still mean what they say.

* :class:`LocalUsers` (``MEDSEG_SERVE_USERS=USERS.json``): the local user store
  (:mod:`medseg.serve.users`); tokens are HS256 JWTs signed with a per-server secret
  (``MEDSEG_SERVE_AUTH_SECRET``, else random at start: restarting the server logs everyone out);
* :class:`Realm` (``MEDSEG_SERVE_AUTH_REALM=URL``): a Keycloak/OIDC realm: its discovery document
  names the JWKS (RS256 keys) and the token endpoint, to which the password grant is forwarded.
  A realm issues tokens to many applications: only those issued to medseg's client
  (``MEDSEG_SERVE_AUTH_CLIENT_ID``, default ``monailabel``, named by ``aud`` or ``azp``) open it.

Both refuse a token that lives longer than ``MEDSEG_SERVE_TOKEN_MINUTES`` (default 60): its ``exp``
may lie at most that far ahead (plus a minute of clock skew), so a stolen long-lived token is no key.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
import requests
from monailabel.config import settings
from monailabel.endpoints.user.auth import User

from medseg.errors import ConfigError
from medseg.serve.users import ROLE_PREFIX, ROLES, UserRecord, load_users, role_claims, verify_password

__all__ = [
    "AuthFailed",
    "CLIENT_ID_ENV",
    "DEFAULT_CLIENT_ID",
    "LocalUsers",
    "Realm",
    "Verifier",
    "configure",
    "current",
    "expand_roles",
]

logger = logging.getLogger("medseg.serve.auth")

ISSUER = "medseg-serve"
USERS_ENV = "MEDSEG_SERVE_USERS"
REALM_ENV = "MEDSEG_SERVE_AUTH_REALM"
SECRET_ENV = "MEDSEG_SERVE_AUTH_SECRET"
MINUTES_ENV = "MEDSEG_SERVE_TOKEN_MINUTES"
CLIENT_ID_ENV = "MEDSEG_SERVE_AUTH_CLIENT_ID"
DEFAULT_CLIENT_ID = "monailabel"  # MONAI Label's client name in its Keycloak set-up
DEFAULT_MINUTES = 60
MAX_MINUTES = 24 * 60
CLOCK_SKEW = 60  # seconds
MIN_SECRET_CHARS = 32


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


def _check_lifetime(payload: dict[str, Any], max_seconds: float) -> None:
    """Refuse a token whose ``exp`` lies further ahead than the server's longest token lifetime."""
    exp = payload.get("exp")
    if isinstance(exp, int | float) and exp - time.time() > max_seconds + CLOCK_SKEW:
        raise AuthFailed(
            f"the token lives longer than this server accepts ({max_seconds / 60:g} minutes); log in again"
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
        """The user of a valid token. Raises AuthFailed (401) for an expired, forged, malformed or
        too long-lived one."""
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
        _check_lifetime(payload, self.minutes * 60)
        return _user_from_claims(payload)

    def describe(self) -> dict[str, Any]:
        return {"mode": "users"}


class Realm:
    """A Keycloak/OIDC realm: its discovery document, JWKS (RS256) and token endpoint.

    Args:
        url: the realm, e.g. ``https://keycloak.example.org/realms/monailabel``
            (``URL/.well-known/openid-configuration`` must answer).
        client_id: medseg's client in the realm: the password grant asks for it, and a token opens
            the server only when its ``aud`` or ``azp`` names it.
        timeout: seconds for each request to the realm.
        max_minutes: the longest token lifetime accepted.
    """

    blocking = True  # network calls: run off the event loop

    def __init__(
        self, url: str, client_id: str, timeout: float = 10.0, max_minutes: float = DEFAULT_MINUTES
    ) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id
        self.timeout = timeout
        self.max_minutes = max_minutes
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

    def _for_this_client(self, payload: dict[str, Any]) -> None:
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.client_id not in audiences and payload.get("azp") != self.client_id:
            raise AuthFailed(
                f"the token was issued to another application ({payload.get('azp') or audience!r}), "
                f"not to {self.client_id!r}; log in through this server"
            )

    def verify(self, token: str) -> User:
        """The user of a token the realm signed for medseg's client (RS256, its issuer, not expired,
        not too long-lived). Raises AuthFailed."""
        issuer = self.discovery()["issuer"]
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
            payload = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                issuer=issuer,
                # aud or azp is checked below: Keycloak names the client in azp, often not in aud
                options={"verify_aud": False, "require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed("the token has expired; log in again") from None
        except jwt.PyJWKClientConnectionError as exc:
            raise AuthFailed(f"the login realm's keys cannot be fetched ({exc})", status=503) from None
        except (jwt.InvalidTokenError, jwt.PyJWKClientError) as exc:
            raise AuthFailed(f"invalid token ({exc})") from None
        self._for_this_client(payload)
        _check_lifetime(payload, self.max_minutes * 60)
        return _user_from_claims(payload)

    def describe(self) -> dict[str, Any]:
        return {"mode": "realm", "realm": self.url, "client_id": self.client_id}


Verifier = LocalUsers | Realm


def _minutes(env: dict[str, str] | os._Environ) -> float:
    try:
        minutes = float(env.get(MINUTES_ENV, DEFAULT_MINUTES))
    except ValueError:
        raise ConfigError(f"{MINUTES_ENV} must be a number of minutes") from None
    if not 0 < minutes <= MAX_MINUTES:
        raise ConfigError(f"{MINUTES_ENV} must be between 0 and {MAX_MINUTES} minutes")
    return minutes


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
        client_id = env.get(CLIENT_ID_ENV) or DEFAULT_CLIENT_ID
        return Realm(realm, client_id, float(settings.MONAI_LABEL_AUTH_TIMEOUT), _minutes(env))
    if not users_file:
        if settings.MONAI_LABEL_AUTH_ENABLE:
            raise ConfigError(
                f"MONAI_LABEL_AUTH_ENABLE is set: use {USERS_ENV} or {REALM_ENV} (medseg serve --users/--auth-realm)"
            )
        return None
    secret = env.get(SECRET_ENV, "")
    if secret and len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"{SECRET_ENV} must have at least {MIN_SECRET_CHARS} characters")
    return LocalUsers(
        load_users(users_file), secret.encode() if secret else secrets.token_bytes(32), _minutes(env)
    )


_state: dict[str, Any] = {"configured": False, "verifier": None, "error": None}


def current() -> Verifier | None:
    """The server's verifier (configured from the environment on first use), or None: no login.

    Raises:
        AuthFailed: 503 after a configuration error (logged once; every request is refused).
    """
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
