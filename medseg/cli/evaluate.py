"""``medseg evaluate BUNDLE``: per-class Dice and HD95 of a bundle's weights on a fold.

With ``--clicks 0 1 3 5`` an interactive bundle is measured by the click protocol instead
(:mod:`medseg.interactive.protocol`): Dice after each number of simulated clicks.

The default fold is the test fold (0), the one no training decision of a planned bundle looked at;
``--data`` takes the dataset folder in MSD or nnU-Net raw layout, 2-D PNG datasets included.
"""

from __future__ import annotations

import argparse

from medseg.precision import add_precision_argument

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a bundle's weights on a fold of the fixed split (Dice, HD95; default the test fold 0)",
        description="Evaluate BUNDLE/models/model.pt on fold K of the fixed split with the bundle's "
        "configs/train.json + configs/evaluate.json; prints a per-class table and writes JSON.",
    )
    parser.add_argument("bundle", help="bundle folder, e.g. bundles/hippocampus_unet3d")
    parser.add_argument(
        "--data", help="dataset folder, MSD or nnU-Net raw layout (default: the bundle's dataset_dir)"
    )
    parser.add_argument("--fold", type=int, default=None, help="fold 0-4 (default 0, the test fold)")
    parser.add_argument("--weights", help="weights to evaluate instead of BUNDLE/models/model.pt")
    parser.add_argument("--output", help="JSON file (default BUNDLE/runs/eval/metrics.json)")
    parser.add_argument(
        "--clicks",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="interactive bundles: the click protocol (after each prediction a click at the centre of the "
        "largest error region, with the true label there; clicks accumulate), Dice after each K clicks "
        "(e.g. --clicks 0 1 3 5; default output BUNDLE/runs/eval/clicks.json)",
    )
    add_precision_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medseg.bundle import evaluate_bundle, open_bundle

    bundle = open_bundle(args.bundle)
    if args.clicks is not None:
        return _run_clicks(args, bundle)
    result = evaluate_bundle(
        bundle,
        data_dir=args.data,
        fold=args.fold,
        output=args.output,
        weights=args.weights,
        precision=args.precision,
    )
    metrics = result["metrics"]
    # evaluate.json names per-class metrics val_dice_<class> and val_hd95_<class>.
    classes = [key.removeprefix("val_dice_") for key in metrics if key.startswith("val_dice_")]
    rows = [(name, metrics.get(f"val_dice_{name}"), metrics.get(f"val_hd95_{name}")) for name in classes]
    precision = result["precision"]
    print(
        f"{bundle.name} {result['version']}: fold {result['fold']}, {result['cases']} cases, "
        f"precision {precision['dtype']} ({precision['reason']}), {result['seconds']:.1f} s"
    )
    print(f"{'label':<24} {'Dice':>7} {'HD95 mm':>8}")
    for name, dice, hd in rows:
        print(f"{name:<24} {_fmt(dice):>7} {_fmt(hd, 2):>8}")
    print(f"{'mean':<24} {_fmt(metrics.get('val_mean_dice')):>7}")
    print(f"written: {result['output']}")
    return 0


def _run_clicks(args: argparse.Namespace, bundle: object) -> int:
    """``--clicks``: the click protocol's table (Dice per label after each click count)."""
    from medseg.interactive.protocol import evaluate_clicks

    result = evaluate_clicks(
        bundle, args.clicks, fold=args.fold, data_dir=args.data, output=args.output, weights=args.weights
    )
    metrics = result["metrics"]
    names = list(metrics[f"dice_clicks_{result['clicks'][0]}"])
    print(
        f"{result['bundle']} {result['version']}: fold {result['fold']}, {result['cases']} cases, "
        f"clicks {' '.join(map(str, result['clicks']))}, {result['seconds']:.1f} s"
    )
    print(f"{'clicks':>6} " + " ".join(f"{name[:24]:>24}" for name in names) + f" {'mean':>7}")
    for k in result["clicks"]:
        row = " ".join(f"{_fmt(metrics[f'dice_clicks_{k}'][name]):>24}" for name in names)
        print(f"{k:>6} {row} {_fmt(metrics[f'mean_dice_clicks_{k}']):>7}")
    print(f"written: {result['output']}")
    return 0


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
