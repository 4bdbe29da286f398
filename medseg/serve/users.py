"""The local user store of ``medseg serve --users USERS.json`` (stdlib + bcrypt; both venvs import it).

Small labs without a Keycloak/OIDC realm keep their users in one JSON file written by
``medseg users add``. The file holds names, roles and bcrypt hashes only (never a password) and is
kept private: it is created 0600 whatever the umask, rewritten atomically (a temporary file in
the same folder, then ``os.replace``), and a server refuses to read it when the group or others
have any access to it. Roles are MONAI Label's (``monailabel-admin|reviewer|annotator|user``) and
nest: admin > reviewer > annotator > user, so a user's token carries every role its role implies.

Format::

    {"version": 1, "users": {"alice": {"role": "annotator", "password_hash": "$2b$12$..."}}}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from medseg.errors import ConfigError, InputError

__all__ = [
    "ROLES",
    "ROLE_PREFIX",
    "UserRecord",
    "add_user",
    "check_private",
    "implied_roles",
    "load_users",
    "remove_user",
    "role_claims",
    "verify_password",
]

ROLES = ("user", "annotator", "reviewer", "admin")  # lowest to highest; each implies those before it
ROLE_PREFIX = "monailabel-"
FORMAT_VERSION = 1
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_BYTES = 72  # bcrypt uses the first 72 bytes only; refuse longer rather than truncate
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
# checked against when a name is unknown, so that a login takes as long for unknown names as for known ones
_DUMMY_HASH = b"$2b$12$N1J.BCX2iDN8GdTiBvyhS./8qo0B04WuSp1xCcxhokP5BExFSbC0u"


@dataclass(frozen=True)
class UserRecord:
    """One user of the store: name, role (one of :data:`ROLES`) and bcrypt hash."""

    name: str
    role: str
    password_hash: str


def implied_roles(role: str) -> list[str]:
    """``role`` and every role below it, highest first (``"reviewer"`` -> reviewer, annotator, user).

    Args:
        role: one of :data:`ROLES`, with or without the ``monailabel-`` prefix.
    """
    bare = role.removeprefix(ROLE_PREFIX)
    if bare not in ROLES:
        raise ConfigError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    return list(reversed(ROLES[: ROLES.index(bare) + 1]))


def role_claims(role: str) -> list[str]:
    """The ``realm_access.roles`` claim of a token for ``role``: MONAI Label's names of every implied role."""
    return [ROLE_PREFIX + r for r in implied_roles(role)]


def check_private(path: Path) -> None:
    """Refuse a users file that the group or others can access (the hashes can be attacked offline).

    Raises:
        ConfigError: it is not a regular file, or its mode grants group/other access; says to chmod 600.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(
            f"users file {path} does not exist; create it with `medseg users add NAME --role ROLE --file {path}`"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"users file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise ConfigError(
            f"users file {path} can be read or written by others (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run `chmod 600 {path}` and start again"
        )


def _parse(path: Path, text: str) -> dict[str, UserRecord]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"users file {path} is not valid JSON ({exc}); it is written by `medseg users`"
        ) from exc
    if (
        not isinstance(data, dict)
        or data.get("version") != FORMAT_VERSION
        or not isinstance(data.get("users"), dict)
    ):
        raise ConfigError(f"users file {path} is not a medseg users file (version {FORMAT_VERSION})")
    users = {}
    for name, entry in data["users"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("password_hash"), str):
            raise ConfigError(f"users file {path}: entry {name!r} has no password_hash")
        implied_roles(str(entry.get("role")))  # raises for an unknown role
        users[name] = UserRecord(name, str(entry["role"]), entry["password_hash"])
    return users


def load_users(path: str | os.PathLike, require_private: bool = True) -> dict[str, UserRecord]:
    """Read a users file.

    Args:
        path: the JSON file written by ``medseg users add``.
        require_private: refuse it when the group or others have access (:func:`check_private`).

    Raises:
        ConfigError: missing, not private, malformed, or without users.
    """
    path = Path(path)
    if require_private:
        check_private(path)
    users = _parse(path, path.read_text(encoding="utf-8"))
    if not users:
        raise ConfigError(f"users file {path} has no users; add one with `medseg users add`")
    return users


def verify_password(users: dict[str, UserRecord], name: str, password: str) -> UserRecord | None:
    """The user ``name`` when ``password`` is theirs, else None (unknown names cost as much time as known)."""
    record = users.get(name)
    candidate = password.encode("utf-8")[:MAX_PASSWORD_BYTES]
    stored = record.password_hash.encode("ascii") if record else _DUMMY_HASH
    try:
        matches = bcrypt.checkpw(candidate, stored)
    except ValueError:  # a damaged hash in the file
        return None
    return record if (matches and record is not None) else None


def _check_new(name: str, password: str) -> None:
    if not _NAME.match(name):
        raise InputError(
            f"user name {name!r} is not allowed: use 1-64 letters, digits, '.', '_', '@' or '-', starting "
            "with a letter or digit"
        )
    if len(password) < MIN_PASSWORD_CHARS:
        raise InputError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        raise InputError(f"the password must be at most {MAX_PASSWORD_BYTES} bytes (a bcrypt limit)")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` + ``.lock`` (itself 0600) so that concurrent ``add``s do not lose users."""
    import fcntl

    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, users: dict[str, UserRecord]) -> None:
    data = {
        "version": FORMAT_VERSION,
        "users": {u.name: {"role": u.role, "password_hash": u.password_hash} for u in users.values()},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def add_user(
    path: str | os.PathLike, name: str, role: str, password: str, replace: bool = False
) -> UserRecord:
    """Add ``name`` to the users file (created 0600 when missing), storing only a bcrypt hash.

    Args:
        path: the users file.
        name: user name (the token's ``preferred_username``).
        role: one of :data:`ROLES`.
        password: at least 8 characters, at most 72 bytes.
        replace: set a new role and password for an existing ``name`` instead of refusing it.

    Raises:
        InputError: bad name or password, or ``name`` exists and ``replace`` is false.
        ConfigError: the existing file is not private or not a users file.
    """
    path = Path(path)
    bare = implied_roles(role)[0]
    _check_new(name, password)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        if path.exists():
            check_private(path)
        users = _parse(path, path.read_text(encoding="utf-8")) if path.exists() else {}
        if name in users and not replace:
            raise InputError(
                f"user {name!r} is already in {path}; pass --replace to set a new role and password"
            )
        hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt()).decode("ascii")
        users[name] = UserRecord(name, bare, hashed)
        _write(path, users)
    return users[name]


def remove_user(path: str | os.PathLike, name: str) -> None:
    """Remove ``name`` from the users file.

    Raises:
        InputError: ``name`` is not in the file.
    """
    path = Path(path)
    with _locked(path):
        users = load_users(path)
        if name not in users:
            raise InputError(f"user {name!r} is not in {path}")
        del users[name]
        _write(path, users)
