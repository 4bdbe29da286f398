"""``medseg ensemble choose``: pick configurations by cross-validated Dice and write the ensemble bundle.

nnU-Net's ``find_best_configuration`` followed by its ensembling, on medseg's bundles: each BUNDLE
must have been cross-validated (``medseg train BUNDLE --cv``); the choice and the learned
postprocessing look at folds 1-4 only.
"""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ensemble",
        help="choose among cross-validated bundles (and their pairs) and write an ensemble bundle",
        description="Cross-validated ensembles, as nnU-Net chooses them.",
    )
    commands = parser.add_subparsers(dest="ensemble_command", metavar="COMMAND", required=True)
    choose = commands.add_parser(
        "choose",
        help="score each bundle and each pair on their out-of-fold predictions; write the best as a bundle",
        description="Score every cross-validated BUNDLE, and every pair of them (softmax averaged), by "
        "the mean Dice over the out-of-fold cases of folds 1-4; learn nnU-Net's connected-component "
        "postprocessing for the best, and write its members (one per configuration and fold) as one "
        "bundle in OUTPUT. Fold 0, the test fold, is not read.",
    )
    choose.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundles trained with medseg train --cv")
    choose.add_argument("--output", "-o", required=True, help="the ensemble bundle's folder")
    choose.add_argument("--name", help="the ensemble's name (default: the folder's name)")
    choose.add_argument("--data", help="dataset folder (default: the bundles' dataset_dir)")
    choose.add_argument(
        "--max-configurations",
        type=int,
        default=2,
        help="largest combination of configurations tried (default 2, as nnU-Net)",
    )
    choose.set_defaults(func=run_choose)


def run_choose(args: argparse.Namespace) -> int:
    from medseg.ensemble.bundle import write_ensemble
    from medseg.ensemble.choose import choose_configuration

    choice = choose_configuration(args.bundles, args.data, args.max_configurations)
    names = list(choice["candidates"][0]["dice"])
    print(f"cross-validation, {choice['cases']} out-of-fold cases (folds 1-4):")
    print(f"{'configurations':<48} " + " ".join(f"{n[:22]:>22}" for n in names) + f" {'mean':>7}")
    for c in choice["candidates"]:
        label = " + ".join(c["configurations"])
        print(f"{label[:48]:<48} " + " ".join(f"{c['dice'][n]:>22.4f}" for n in names) + f" {c['mean_dice']:>7.4f}")
    kept = [s["step"] for s in choice["postprocessing"]["steps"] if s["accepted"]]
    print(f"chosen: {' + '.join(choice['chosen'])}; postprocessing: {'; '.join(kept) or 'none helps'}")
    write_ensemble(args.bundles, choice, args.output, name=args.name)
    print(f"written: {args.output}")
    return 0
