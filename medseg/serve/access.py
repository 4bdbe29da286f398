"""Who may reach a ``medseg serve`` server: the checks the command makes before it starts (core venv).

The login itself runs in the server (:mod:`medseg.serve.label.auth`); this module turns the
command's options into that server's environment, and refuses what would expose data:
a bind address other than loopback without a login (unless ``--insecure-no-auth``), a users file
that others can read, an unreachable realm, half a TLS configuration.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

from medseg.errors import ConfigError
from medseg.serve.users import load_users

__all__ = ["auth_environment", "check_bind", "check_realm", "check_tls", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: the name cannot be resolved ({exc})") from None
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_bind(host: str, login: bool, insecure_no_auth: bool) -> None:
    """Refuse a non-loopback bind address without a login, unless the user insists.

    Raises:
        ConfigError: saying how to add a login.
    """
    if login or insecure_no_auth or is_loopback(host):
        return
    raise ConfigError(
        f"--host {host} would let other computers reach the server without a login; add users "
        "(`medseg users add NAME --role ROLE --file USERS.json`, then --users USERS.json) or a realm "
        "(--auth-realm URL), or pass --insecure-no-auth if a proxy in front of it authenticates"
    )


def check_tls(certfile: str | None, keyfile: str | None) -> None:
    """Both TLS files or neither, and both readable.

    Raises:
        ConfigError: one is missing.
    """
    if bool(certfile) != bool(keyfile):
        raise ConfigError("TLS needs both --ssl-certfile and --ssl-keyfile")
    for flag, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{flag} {path} does not exist")


def check_realm(url: str, timeout: float = 10.0) -> dict:
    """The realm's OpenID configuration (``URL/.well-known/openid-configuration``).

    Raises:
        ConfigError: not an http(s) URL, unreachable, or not a discovery document.
    """
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--auth-realm {url} is not an http(s) URL, e.g. https://HOST/realms/monailabel")
    where = url.rstrip("/") + "/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(where, timeout=timeout) as response:
            found = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ConfigError(f"--auth-realm: {where} does not answer with a discovery document ({exc})") from exc
    missing = [k for k in ("issuer", "jwks_uri", "token_endpoint") if not isinstance(found.get(k), str)]
    if missing:
        raise ConfigError(
            f"--auth-realm: {where} has no {', '.join(missing)}; is it an OpenID Connect realm?"
        )
    return found


def auth_environment(
    users: str | None, realm: str | None, token_minutes: float, client_id: str = "monailabel"
) -> dict[str, str]:
    """The server's environment for a login mode (empty values switch a mode off).

    Args:
        users: the users file (checked: private, with users), or None.
        realm: the Keycloak/OIDC realm URL (checked: its discovery document answers), or None.
        token_minutes: lifetime of local tokens, and the longest lifetime accepted of any token.
        client_id: medseg's client in the realm (a realm token must name it in ``aud`` or ``azp``).

    Raises:
        ConfigError: both modes, or a failed check.
    """
    if users and realm:
        raise ConfigError("--users and --auth-realm exclude each other; choose one login")
    if not 0 < token_minutes <= 24 * 60:
        raise ConfigError("--token-minutes must be between 0 and 1440")
    if not client_id or not client_id.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"--auth-client-id {client_id!r} is not a client name (letters, digits, '._-')")
    env = {"MEDSEG_SERVE_USERS": "", "MEDSEG_SERVE_AUTH_REALM": "", "MONAI_LABEL_AUTH_ENABLE": "false"}
    if users:
        load_users(users)
        env.update(
            MEDSEG_SERVE_USERS=str(Path(users).resolve()),
            MEDSEG_SERVE_TOKEN_MINUTES=str(token_minutes),
            MONAI_LABEL_AUTH_ENABLE="true",
        )
    elif realm:
        check_realm(realm)
        env.update(
            MEDSEG_SERVE_AUTH_REALM=realm,
            MONAI_LABEL_AUTH_REALM_URI=realm,
            MONAI_LABEL_AUTH_ENABLE="true",
            MONAI_LABEL_AUTH_CLIENT_ID=client_id,
            MEDSEG_SERVE_AUTH_CLIENT_ID=client_id,
            MEDSEG_SERVE_TOKEN_MINUTES=str(token_minutes),
        )
    return env
