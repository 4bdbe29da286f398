"""``medseg train BUNDLE``: train a bundle through its own ``configs/train.json``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a bundle (its configs/train.json) on the fixed 5-fold split",
        description="Train a MONAI bundle through its own configs/train.json. Fold K is held out for "
        "validation; the others train. The best weights replace BUNDLE/models/model.pt unless "
        "--output-dir is given.",
    )
    parser.add_argument("bundle", help="bundle folder, e.g. bundles/hippocampus_unet3d")
    parser.add_argument("--data", help="MSD task folder (default: $MEDSEG_DATA_DIR or ../shared/data)")
    parser.add_argument("--fold", type=int, default=None, help="validation fold 0-4 (default 0)")
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the bundle's)")
    parser.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    parser.add_argument("--output-dir", help="logs, checkpoints and weights go here instead of the bundle")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.bundle import open_bundle, train_bundle

    bundle = open_bundle(args.bundle)
    result = train_bundle(
        bundle,
        data_dir=args.data,
        fold=args.fold,
        epochs=args.epochs,
        resume=args.resume,
        output_dir=args.output_dir,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(
        f"trained {bundle.name} for {result['epochs']} epochs: best validation mean Dice "
        f"{result['best_metric']:.4f} at epoch {result['best_metric_epoch']}"
    )
    return 0
