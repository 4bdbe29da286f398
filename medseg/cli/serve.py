"""``medseg serve [--studies PATH_OR_URL] [--bundles PATH_OR_NAME ...] [--bundles-dir DIR] [--port N]``.

Prepares a working folder (served copies of the bundles, a datastore mirrored from the studies)
and runs a MONAI Label server for 3D Slicer on 127.0.0.1 in the foreground, until Ctrl-C/SIGTERM.
``--users USERS.json`` or ``--auth-realm URL`` require a login for every route (see
:mod:`medseg.serve.label.auth`); only then may ``--host`` name a non-loopback address (or with
``--insecure-no-auth``, for a server behind an authenticating proxy); ``--ssl-certfile`` /
``--ssl-keyfile`` serve HTTPS.
Works from a source checkout and from an installed package: bundles are folder paths (or names
looked up as :mod:`medseg.paths` says), and the MONAI Label venv is built from the recipe shipped
in the package on first use. See workflows/README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError
from medseg.precision import PRECISION_ENV, add_precision_argument

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``serve`` subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve bundles to 3D Slicer / DICOMweb through a MONAI Label server on 127.0.0.1",
        description="Start a MONAI Label server on 127.0.0.1 that serves MONAI bundles "
        "(model names = bundle folder names). The MONAI Label venv is built on first use (minutes). The studies folder is never written to: it is mirrored "
        "into WORKDIR/datastore (links; DICOM series converted to NIfTI; MSD labelsTr copied as final "
        "labels). /train writes fine-tuned weights as new versions in WORKDIR, never into bundles/. "
        "Without --users or --auth-realm there is no login: keep it on 127.0.0.1. Research use only.",
    )
    parser.add_argument(
        "--studies",
        metavar="PATH_OR_URL",
        default=None,
        help="folder of images/DICOM series or MSD task folder, or a DICOMweb URL "
        "(e.g. http://127.0.0.1:8042/dicom-web); default: an empty datastore in the workdir",
    )
    parser.add_argument(
        "--bundles",
        metavar="PATH_OR_NAME",
        nargs="+",
        default=None,
        help="bundles to serve: bundle folder paths, or names of folders in --bundles-dir (or in the "
        "bundles folder found as for --bundles-dir); several, space- or comma-separated "
        "(default: every bundle with weights in --bundles-dir)",
    )
    parser.add_argument(
        "--bundles-dir",
        metavar="DIR",
        default=None,
        help="folder of bundle folders (default: $MEDSEG_BUNDLES_DIR, else bundles/ beside the source "
        "checkout or in the working directory or a parent)",
    )
    parser.add_argument(
        "--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0 picks a free one)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1); another address needs --users or --auth-realm",
    )
    login = parser.add_mutually_exclusive_group()
    login.add_argument(
        "--users",
        metavar="USERS.json",
        default=None,
        help="require a login from the users in this file (made by `medseg users add`; mode 0600)",
    )
    login.add_argument(
        "--auth-realm",
        metavar="URL",
        default=None,
        help="require a login from this Keycloak/OIDC realm (e.g. https://HOST/realms/monailabel)",
    )
    parser.add_argument(
        "--token-minutes",
        type=float,
        default=60.0,
        help="lifetime of the tokens --users issues, and the longest lifetime accepted of any token, "
        "realm tokens included (default 60); restarting the server ends all --users tokens",
    )
    parser.add_argument(
        "--auth-client-id",
        metavar="NAME",
        default="monailabel",
        help="medseg's client in the --auth-realm (default monailabel): tokens the realm issued to other "
        "applications (another aud/azp) are refused",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=1024.0,
        help="largest request body, an uploaded image or label (default 1024 MB); refused while it streams in",
    )
    parser.add_argument(
        "--max-voxels",
        type=float,
        default=512**3,
        help="most voxels an uploaded image or label may announce in its header (default 512^3 = 134217728); "
        "checked before any voxel is read or inflated",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --host without a login (only behind a proxy that authenticates)",
    )
    parser.add_argument(
        "--ssl-certfile", metavar="PEM", default=None, help="serve HTTPS with this certificate"
    )
    parser.add_argument("--ssl-keyfile", metavar="PEM", default=None, help="the certificate's private key")
    parser.add_argument(
        "--workdir", metavar="DIR", default=None, help="working folder (default: ~/.cache/medseg/serve)"
    )
    parser.add_argument(
        "--infer-workers",
        type=int,
        default=1,
        help="inference worker processes (default 1); each loads the models, more requests queue",
    )
    parser.add_argument(
        "--log", metavar="FILE", default=None, help="write the server's log here (default: the terminal)"
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the server to answer (default 600)",
    )
    parser.add_argument(
        "--prepare-only", action="store_true", help="prepare the workdir and print what would run, then exit"
    )
    add_precision_argument(parser, "inference (the server reads it as $" + PRECISION_ENV + ")")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from medseg.serve.access import auth_environment, check_bind, check_tls
    from medseg.serve.launcher import (
        LabelServer,
        find_label_python,
        free_port,
        port_is_free,
        run_foreground,
        upload_environment,
    )
    from medseg.serve.workdir import default_workdir, prepare_workdir, select_bundles

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port {args.port} is not a TCP port")
    if args.infer_workers < 1:
        raise ConfigError("--infer-workers must be at least 1")
    if args.max_upload_mb <= 0 or args.max_voxels < 1:
        raise ConfigError("--max-upload-mb and --max-voxels must be positive")
    args.host = args.host.strip().removeprefix("[").removesuffix("]")  # [::1] as in a URL
    check_bind(args.host, bool(args.users or args.auth_realm), args.insecure_no_auth)
    check_tls(args.ssl_certfile, args.ssl_keyfile)
    auth_env = auth_environment(args.users, args.auth_realm, args.token_minutes, args.auth_client_id)
    auth_env.update(upload_environment(args.max_upload_mb, int(args.max_voxels)))
    if args.precision is not None:  # read by the inference code in the MONAI Label venv
        auth_env[PRECISION_ENV] = args.precision
    wanted = [n.strip() for item in args.bundles or [] for n in item.split(",") if n.strip()]
    bundles = select_bundles(wanted or None, Path(args.bundles_dir) if args.bundles_dir else None)
    workdir = Path(args.workdir) if args.workdir else default_workdir()
    prepared = prepare_workdir(workdir, args.studies, bundles)
    if prepared.report is not None:
        r = prepared.report
        print(
            f"datastore {prepared.studies}: {len(r.images)} images ({len(r.converted)} converted from DICOM), "
            f"{len(r.labels)} final labels"
        )
        for line in r.skipped:
            print(f"  skipped {line}")
    port = args.port or free_port(args.host)
    if not port_is_free(port, args.host):
        raise ConfigError(
            f"port {port} on {args.host} is in use (another server?); choose another with --port"
        )
    where = {"host": args.host, "ssl_certfile": args.ssl_certfile, "ssl_keyfile": args.ssl_keyfile}
    if args.prepare_only:
        server = LabelServer("<label-venv>/bin/python", prepared, port=port, **where)
        print(" ".join(server.command()))
        return 0
    python = find_label_python(create=True)
    server = LabelServer(
        python,
        prepared,
        port=port,
        log=args.log,
        infer_workers=args.infer_workers,
        extra_env=auth_env,
        **where,
    )
    return run_foreground(server, ready_timeout=args.ready_timeout)
