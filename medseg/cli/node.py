"""``medseg node --port PORT --bundle B --destination AET@HOST:PORT --workdir DIR`` and ``medseg node status``.

Runs the DICOM node (:mod:`medseg.node`) in the foreground until Ctrl-C/SIGTERM; ``status`` lists
what a node's workdir holds: series received, processing, sent and refused (with the reason).
``--route CONDITIONS:BUNDLE`` (repeatable) sends series by their header to several bundles
(:mod:`medseg.node.routing`); ``--bundle`` then takes the series no route matches, and without it
those are refused. ``--destination`` is an AE (C-STORE) or a DICOMweb root URL (STOW-RS).
Research use only, not for diagnosis.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``node`` subcommand.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "node",
        help="a DICOM node: receive series by C-STORE, segment, send SEG and RTSTRUCT back",
        description="Listen for DICOM (C-ECHO, C-STORE), segment each complete series once with BUNDLE "
        "and send its DICOM SEG and RTSTRUCT to the destination AE. The queue lives in DIR/node.sqlite "
        "and survives restarts. 'medseg node status --workdir DIR' lists the series. Research use only.",
    )
    parser.add_argument(
        "action", nargs="?", choices=["run", "status"], default="run", help="run the node (default) or status"
    )
    parser.add_argument("--workdir", required=True, metavar="DIR", help="the node's folder (queue, files)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (e.g. 11112)")
    parser.add_argument(
        "--bundle", metavar="BUNDLE",
        help="bundle that segments every series (with --route: those no route matches)",
    )
    parser.add_argument(
        "--route", action="append", default=[], metavar="CONDITIONS:BUNDLE",
        help="routing rule, repeatable, first match wins: e.g. 'Modality=MR,SeriesDescription~hippo:"
        "hippocampus_unet3d' (Keyword=value equal, Keyword~regex search, ignoring case; '*' any series)",
    )
    parser.add_argument(
        "--destination", metavar="AET@HOST:PORT|URL",
        help="where the SEG and RTSTRUCT go: an AE (C-STORE) or a DICOMweb root such as "
        "http://pacs:8042/dicom-web (STOW-RS)",
    )
    parser.add_argument("--ae-title", default="MEDSEG", help="the node's AE title (default MEDSEG)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    parser.add_argument(
        "--settle-seconds", type=float, default=10.0, metavar="S",
        help="a series is complete after S seconds without new instances (default 10)",
    )
    parser.add_argument(
        "--complete-at-release", action="store_true",
        help="also treat a series as complete when the association that sent it is released",
    )
    parser.add_argument(
        "--allowed-aet", action="append", default=[], metavar="AET",
        help="calling AE title allowed to associate (repeat; default: any AE that reaches the port)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--force", action="store_true", help="segment series that do not suit the bundle")
    parser.add_argument("--json", action="store_true", help="status as JSON")
    parser.set_defaults(func=run)
    return parser


def _status(workdir: Path, as_json: bool) -> int:
    from medseg.errors import ConfigError
    from medseg.node.queue import DB_NAME, NodeQueue

    if not (workdir / DB_NAME).is_file():
        raise ConfigError(f"{workdir} is not a node's workdir (no {DB_NAME}); give the --workdir of a node")
    queue = NodeQueue(workdir)
    rows = queue.all()
    if as_json:
        print(json.dumps({"counts": queue.counts(), "series": [r.to_dict() for r in rows]}, indent=1))
        return 0
    counts = queue.counts()
    print(", ".join(f"{state} {n}" for state, n in counts.items()))
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.last_received))
        line = f"{row.state:<10} {row.series_uid} {row.modality or '?'} {row.instances} instances from {row.calling_aet or '?'} at {when}"
        line += f" ({row.bundle})" if row.bundle else ""
        print(line + (f": {row.reason}" if row.reason and row.state in ("refused", "failed") else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the node, or print its status."""
    from medseg.errors import ConfigError

    workdir = Path(args.workdir)
    if args.action == "status":
        return _status(workdir, args.json)
    from medseg.node.routing import parse_route
    from medseg.node.service import DicomNode, NodeConfig, node_log_handler, parse_destination
    from medseg.paths import resolve_bundle_path

    missing = [flag for flag, value in (("--port", args.port), ("--destination", args.destination)) if value is None]
    if args.bundle is None and not args.route:
        missing.append("--bundle or --route")
    if missing:
        raise ConfigError(f"medseg node needs {', '.join(missing)} (see medseg node --help)")
    bundle = None
    if args.bundle is not None:
        bundle = resolve_bundle_path(args.bundle)
        if bundle is None:
            raise ConfigError(f"--bundle {args.bundle}: no such bundle folder; give a path or a bundle name")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1-65535, got {args.port}")
    if args.settle_seconds < 0:
        raise ConfigError(f"--settle-seconds must be >= 0, got {args.settle_seconds}")
    config = NodeConfig(
        workdir=workdir,
        bundle=bundle,
        routes=tuple(parse_route(text) for text in args.route),
        destination=parse_destination(args.destination),
        port=args.port,
        ae_title=args.ae_title,
        host=args.host,
        settle_seconds=args.settle_seconds,
        complete_at_release=args.complete_at_release,
        allowed_aets=tuple(args.allowed_aet),
        device=args.device,
        force=args.force,
    )
    node = DicomNode(config)
    workdir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("medseg").addHandler(node_log_handler(workdir))
    logging.getLogger("medseg.node").setLevel(logging.INFO)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    node.load_bundles()  # before listening: a broken bundle fails here, not per series
    routes = "; ".join(str(route) for route in config.all_routes())
    print(f"medseg node {config.ae_title} on port {config.port}; routes {routes}; results to "
          f"{config.destination}; workdir {workdir}", flush=True)
    try:
        node.serve_forever()
    except KeyboardInterrupt:
        node.stop()
    return 0
