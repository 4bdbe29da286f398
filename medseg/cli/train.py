"""``medseg train BUNDLE``: train a bundle through its own ``configs/train.json``.

Fold 0 of the fixed split is the test fold, so ``--fold`` names the validation fold among the
others and the rest train (``--fold all``: every non-test fold trains, as nnU-Net's ``fold all``,
and the validation fold only monitors). ``--max-minutes`` adds :class:`medseg.engine.TimeBudget`
through bundle overrides: the clock starts when the command starts, so data caching counts against
the budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from medseg.precision import add_precision_argument

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a bundle (its configs/train.json) on folds 1-4 of the fixed 5-fold split",
        description="Train a MONAI bundle through its own configs/train.json. Fold 0 is the test fold "
        "and is never used; fold K (--fold, default the bundle's: 1 for planned bundles) monitors, the "
        "others train (--fold all: folds 1-4 all train). The final weights replace BUNDLE/models/model.pt "
        "unless --output-dir is given.",
    )
    parser.add_argument("bundle", help="bundle folder, e.g. bundles/hippocampus_unet3d")
    parser.add_argument(
        "--data", help="dataset folder, MSD or nnU-Net raw layout (default: the bundle's dataset_dir)"
    )
    parser.add_argument(
        "--fold",
        type=_fold,
        default=None,
        help="validation fold 1-4 (default the bundle's); 0 is the test fold; 'all' trains on folds 1-4 "
        "(a fixed schedule; the bundle's validation fold, trained on too, only monitors)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="maximum epochs (default: the bundle's, or the time budget's)",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="wall-clock budget for the whole command, data caching included: the epochs and the "
        "learning-rate schedule are fitted to it after the first iterations",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the training's random seed (initial weights, shuffling, augmentation) instead of the bundle's",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    parser.add_argument(
        "--cv",
        action="store_true",
        help="cross-validation: one member per non-test fold (BUNDLE/cv/fold_K), each predicting its own "
        "fold; finished members are skipped, interrupted ones resume; writes plans/cv.json",
    )
    parser.add_argument(
        "--folds",
        type=int,
        nargs="+",
        default=None,
        help="with --cv: the members to train (default 1 2 3 4); run several processes with different "
        "folds in parallel",
    )
    parser.add_argument(
        "--warm-start",
        help="interactive bundles: start from this plain bundle's weights of the same network (models/model.pt); "
        "the guidance channels' input weights start at zero",
    )
    parser.add_argument("--output-dir", help="logs, checkpoints and weights go here instead of the bundle")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_precision_argument(
        parser,
        "the training and validation passes (fp32 weights; auto: what the bundle's measured plan chose on "
        "this CPU model, medseg plan --measure, else bf16 only with AMX)",
    )
    parser.set_defaults(func=run)


def _fold(text: str) -> int | str:
    from medseg.bundle.train import ALL_FOLDS

    if text == ALL_FOLDS:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fold number (1-4) or {ALL_FOLDS!r}, not {text!r}") from None


def run(args: argparse.Namespace) -> int:
    start_time = time.time()
    from medseg.bundle import open_bundle, train_bundle
    from medseg.errors import InputError

    bundle = open_bundle(args.bundle)
    if args.cv:
        return _run_cv(args, bundle)
    if args.folds is not None:
        raise InputError("--folds goes with --cv; use --fold K to train one network", param="folds")
    extra = {}
    if args.warm_start:
        if "warm_start" not in (bundle.root / "configs" / "train.json").read_text():
            raise InputError(
                "--warm-start is for interactive bundles (medseg plan --interactive)", param="warm_start"
            )
        extra["warm_start"] = str(Path(args.warm_start).resolve())
    result = train_bundle(
        bundle,
        data_dir=args.data,
        fold=args.fold,
        epochs=args.epochs,
        resume=args.resume,
        output_dir=args.output_dir,
        progress=not args.no_progress and sys.stderr.isatty(),
        max_minutes=args.max_minutes,
        start_time=start_time,
        precision=args.precision,
        seed=args.seed,
        **extra,
    )
    monitored = " (trained on too)" if result["val_fold"] in result["train_folds"] else ""
    validation = (
        f"last validation (fold {result['val_fold']}{monitored}) mean Dice {result['last_metric']:.4f}"
        if result["last_metric"] >= 0
        else f"no validation on fold {result['val_fold']} ran"
    )
    print(
        f"trained {bundle.name} on folds {', '.join(map(str, result['train_folds']))}: "
        f"{result['epochs']} epochs, {result['iterations']} iterations in {result['seconds'] / 60:.1f} min; "
        f"{validation}; precision {result['precision']['dtype']} ({result['precision']['reason']})"
    )
    return 0


def _run_cv(args: argparse.Namespace, bundle: Any) -> int:
    from medseg.ensemble.cv import train_cv
    from medseg.errors import InputError

    if args.seed is not None:
        raise InputError("--seed trains one network; --cv members train with the bundle's seed", param="seed")
    if args.fold is not None or args.resume or args.output_dir:
        raise InputError(
            "--cv trains every member into BUNDLE/cv/fold_K and resumes unfinished ones itself; "
            "drop --fold, --resume and --output-dir (or use --folds)",
            param="cv",
        )
    summary = train_cv(
        bundle,
        data_dir=args.data,
        folds=args.folds,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        progress=not args.no_progress and sys.stderr.isatty(),
        precision=args.precision,
    )
    print(f"{bundle.name} cross-validation ({summary['cases']} out-of-fold cases):")
    names = list(summary["dice"])
    print(f"{'fold':>4} " + " ".join(f"{n[:22]:>22}" for n in names) + f" {'mean':>7}")
    for fold, member in summary["members"].items():
        print(
            f"{fold:>4} "
            + " ".join(f"{member['dice'][n]:>22.4f}" for n in names)
            + f" {member['mean_dice']:>7.4f}"
        )
    print(
        f"{'all':>4} "
        + " ".join(f"{summary['dice'][n]:>22.4f}" for n in names)
        + f" {summary['mean_dice']:>7.4f}"
    )
    post = summary.get("postprocessing")
    if post:
        kept = [s["step"] for s in post["steps"] if s["accepted"]]
        print("postprocessing: " + ("; ".join(kept) if kept else "none helps"))
    return 0
