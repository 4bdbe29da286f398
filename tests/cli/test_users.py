"""``medseg users add|list|remove`` and the users file they keep (:mod:`medseg.serve.users`).

The file is created 0600 whatever the umask, holds bcrypt hashes only, a second ``add`` appends,
an existing name needs ``--replace``, ``--password-stdin`` takes one line without its newline, and
a file that the group or others can read is refused with a message saying ``chmod 600``.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.cli import users as users_cli
from medseg.cli.main import main
from medseg.errors import ConfigError, InputError
from medseg.serve.users import add_user, implied_roles, load_users, role_claims, verify_password

REPO_ROOT = Path(__file__).resolve().parents[2]


def medseg_users(*args: str, password: str | None = None, umask: int = 0) -> subprocess.CompletedProcess:
    """``medseg users ...`` as a user runs it, with the given umask; ``password`` is sent to stdin."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "medseg", "users", *args],
        input=password,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        preexec_fn=lambda: os.umask(umask),
    )


def test_add_creates_a_private_file_whatever_the_umask_and_appends(tmp_path: Path):
    path = tmp_path / "lab" / "users.json"
    first = medseg_users(
        "add",
        "alice",
        "--role",
        "annotator",
        "--file",
        str(path),
        "--password-stdin",
        password="correct horse battery\n",
        umask=0,
    )
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = medseg_users(
        "add",
        "bob",
        "--role",
        "admin",
        "--file",
        str(path),
        "--password-stdin",
        password="bob's password\r\n",
        umask=0o002,
    )
    assert second.returncode == 0, second.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "correct horse" not in text and "bob's password" not in text  # hashes only
    users = load_users(path)
    assert sorted(users) == ["alice", "bob"] and users["bob"].role == "admin"
    assert users["alice"].password_hash.startswith("$2b$")
    # the newline is not part of the password, the spaces are
    assert verify_password(users, "alice", "correct horse battery") is users["alice"]
    assert verify_password(users, "alice", "correct horse battery\n") is None
    assert verify_password(users, "bob", "bob's password") is users["bob"]
    assert verify_password(users, "alice", "bob's password") is None
    assert verify_password(users, "carol", "correct horse battery") is None
    listed = medseg_users("list", "--file", str(path))
    assert listed.returncode == 0 and listed.stdout.split() == ["alice", "annotator", "bob", "admin"]


def test_same_name_is_refused_unless_replace(tmp_path: Path):
    path = tmp_path / "users.json"
    add_user(path, "alice", "user", "first-password")
    again = medseg_users(
        "add",
        "alice",
        "--role",
        "admin",
        "--file",
        str(path),
        "--password-stdin",
        password="second-password\n",
    )
    assert again.returncode == 2 and "--replace" in again.stderr
    assert load_users(path)["alice"].role == "user"
    replaced = medseg_users(
        "add",
        "alice",
        "--role",
        "admin",
        "--file",
        str(path),
        "--password-stdin",
        "--replace",
        password="second-password\n",
    )
    assert replaced.returncode == 0, replaced.stderr
    users = load_users(path)
    assert users["alice"].role == "admin" and verify_password(users, "alice", "second-password")
    assert verify_password(users, "alice", "first-password") is None
    removed = medseg_users("remove", "alice", "--file", str(path))
    assert removed.returncode == 0
    with pytest.raises(ConfigError, match="no users"):
        load_users(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o620])
def test_a_file_others_can_access_is_refused(tmp_path: Path, mode: int):
    path = tmp_path / "users.json"
    add_user(path, "alice", "user", "a-long-password")
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_users(path)
    with pytest.raises(ConfigError, match="chmod 600"):
        add_user(path, "bob", "user", "a-long-password")
    refused = medseg_users("list", "--file", str(path))
    assert refused.returncode == 2 and f"chmod 600 {path}" in refused.stderr


def test_bad_input_is_refused(tmp_path: Path):
    path = tmp_path / "users.json"
    with pytest.raises(InputError, match="at least 8"):
        add_user(path, "alice", "user", "short")
    with pytest.raises(InputError, match="72 bytes"):
        add_user(path, "alice", "user", "x" * 73)
    with pytest.raises(InputError, match="not allowed"):
        add_user(path, "../alice", "user", "a-long-password")
    with pytest.raises(ConfigError, match="unknown role"):
        add_user(path, "alice", "superuser", "a-long-password")
    assert not path.exists()
    empty = medseg_users(
        "add", "alice", "--role", "user", "--file", str(path), "--password-stdin", password=""
    )
    assert empty.returncode == 2 and "standard input is empty" in empty.stderr
    with pytest.raises(ConfigError, match="does not exist"):
        load_users(path)
    path.write_text(json.dumps({"users": []}))
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not a medseg users file"):
        load_users(path)


def test_password_prompt_asks_twice(tmp_path: Path, monkeypatch):
    path = tmp_path / "users.json"
    answers = iter(["typed-password", "typed-password", "one-password", "another-one"])
    monkeypatch.setattr(users_cli.getpass, "getpass", lambda prompt="": next(answers))
    assert main(["users", "add", "alice", "--role", "reviewer", "--file", str(path)]) == 0
    assert verify_password(load_users(path), "alice", "typed-password")
    assert main(["users", "add", "bob", "--role", "user", "--file", str(path)]) == 2  # the two differ
    assert sorted(load_users(path)) == ["alice"]


def test_roles_nest():
    assert implied_roles("admin") == ["admin", "reviewer", "annotator", "user"]
    assert implied_roles("monailabel-annotator") == ["annotator", "user"]
    assert role_claims("reviewer") == ["monailabel-reviewer", "monailabel-annotator", "monailabel-user"]
    assert role_claims("user") == ["monailabel-user"]
