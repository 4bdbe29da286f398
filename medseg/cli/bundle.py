"""``medseg bundle``: inspect and export bundles."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bundle", help="export a bundle's network (TorchScript, ONNX)")
    actions = parser.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export",
        help="export models/model.pt to TorchScript or ONNX (checked against eager within 1e-4)",
    )
    export.add_argument("bundle", help="bundle folder, e.g. bundles/hippocampus_unet3d")
    export.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    export.add_argument("--output", help="output file (default BUNDLE/models/model.ts or model.onnx)")
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from medseg.bundle import export_bundle, open_bundle

    result = export_bundle(open_bundle(args.bundle), args.format, args.output)
    print(
        f"exported {result['format']} to {result['path']} (input {result['input_shape']}, "
        f"max |exported - eager| = {result['max_abs_diff']:.2e})"
    )
    return 0
