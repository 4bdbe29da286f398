"""``medseg users add|remove|list ... --file USERS.json``: the local user store of ``medseg serve --users``.

Passwords are read from the terminal (asked twice, not echoed) or, for scripts, as one line from
standard input with ``--password-stdin``; only their bcrypt hash is stored (see
:mod:`medseg.serve.users`, which also says how the file is kept private).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from medseg.errors import InputError

__all__ = ["add_parser", "read_password"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``users`` subcommand and its ``add``, ``remove`` and ``list`` actions."""
    from medseg.serve.users import ROLES

    parser = subparsers.add_parser(
        "users",
        help="manage the users file of `medseg serve --users` (names, roles, bcrypt hashes)",
        description="Manage the local users of `medseg serve --users USERS.json`. The file is created "
        "with mode 0600 and holds bcrypt hashes only. Roles nest: admin > reviewer > annotator > user.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a user (or, with --replace, set a new role and password)")
    add.add_argument("name", help="user name (the token's preferred_username)")
    add.add_argument("--role", required=True, choices=ROLES, help="the user's role")
    add.add_argument(
        "--file", required=True, metavar="USERS.json", help="the users file (created if missing)"
    )
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password as one line from standard input (else: asked twice on the terminal)",
    )
    add.add_argument("--replace", action="store_true", help="the user exists: set the new role and password")
    add.set_defaults(func=run_add)
    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("name")
    remove.add_argument("--file", required=True, metavar="USERS.json")
    remove.set_defaults(func=run_remove)
    listing = actions.add_parser("list", help="list users and roles (never hashes)")
    listing.add_argument("--file", required=True, metavar="USERS.json")
    listing.set_defaults(func=run_list)
    return parser


def read_password(from_stdin: bool) -> str:
    """One line of standard input without its line ending, or a password typed twice on the terminal.

    Raises:
        InputError: standard input is empty, or the two typed passwords differ.
    """
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise InputError("--password-stdin: standard input is empty; pipe the password in as one line")
        return line.rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password (again): ") != first:
        raise InputError("the two passwords differ; nothing was changed")
    return first


def run_add(args: argparse.Namespace) -> int:
    from medseg.serve.users import add_user, implied_roles

    record = add_user(
        args.file, args.name, args.role, read_password(args.password_stdin), replace=args.replace
    )
    print(f"{record.name}: {', '.join(implied_roles(record.role))} in {args.file}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from medseg.serve.users import remove_user

    remove_user(args.file, args.name)
    print(f"removed {args.name} from {args.file}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from medseg.serve.users import load_users

    for record in sorted(load_users(args.file).values(), key=lambda r: r.name):
        print(f"{record.name}\t{record.role}")
    return 0
