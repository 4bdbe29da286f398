"""A cross-validation ensemble against its members: test-fold Dice, seconds per case, peak memory.

For an ensemble bundle (``medseg ensemble choose``), on fold 0 of the fixed split (never seen by
any decision), each variant in its own subprocess on the same machine:

* ``member``: the first member alone (``medseg segment --fast``), no postprocessing;
* ``ensemble``: all members, softmax averaged, no postprocessing;
* ``ensemble+tta``: the same averaged over the 8 flips of the three axes (reported only: the
  hippocampus plans mirror no axis, so the bundle does not use it);
* ``ensemble+post``: all members and the postprocessing cross-validation accepted (the bundle as
  shipped).

Per variant: Dice per label (per case on the original grid, then the mean; :mod:`medseg.evaluation`),
the median seconds per case (preparing, all members' windows, mapping back, postprocessing; reading
and Dice not counted) and the peak RSS. Then the shipped figure itself: the bundle's own
``configs/inference.json`` run with ``python -m monai.bundle run`` on fold 0 and its files scored.
The cross-validation table that chose the ensemble is copied from ``plans/ensemble.json``.
``--ct`` adds the 512x512x139 chest CT series through one member and through the ensemble
(``medseg segment --force``, timing only).

    python benchmarks/ensemble.py --bundle bundles/hippocampus_ensemble [--ct] \\
        [--variants member ensemble ensemble+post] [--out benchmarks/results/ensemble.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = ("member", "ensemble", "ensemble+tta", "ensemble+post")


def worker(bundle_dir: str, variant: str, data: str | None) -> dict[str, Any]:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    from medseg.bundle import open_bundle
    from medseg.bundle.loader import load_inference
    from medseg.data import split_folds
    from medseg.data.dataset import load_datalist
    from medseg.ensemble.cv import load_reference
    from medseg.evaluation import case_dice, mean_dice
    from medseg.postprocess import argmax_channels, largest_components

    bundle = open_bundle(bundle_dir)

    def adjust(parser: Any) -> None:
        if variant == "member":
            parser["network_def#fast"] = True

    inference = load_inference(bundle, "cpu", adjust=adjust)
    dataset = Path(data) if data else Path(inference.parser.get_parsed_content("dataset_dir"))
    post = json.loads((bundle.root / "plans" / "ensemble.json").read_text())["choice"]["postprocessing"]
    invert = Invertd(keys="pred", transform=inference.preprocessing, orig_keys="image", nearest_interp=False)
    classes = [k for k in sorted(bundle.labels) if k != 0]
    flips = [c for n in range(4) for c in itertools.combinations((2, 3, 4), n)] if variant == "ensemble+tta" else [()]
    per_case, seconds = {}, []
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for item in split_folds(load_datalist(dataset), 0):
        reference = load_reference(inference, item["label"])
        start = time.perf_counter()
        data_item = inference.preprocessing({"image": item["image"]})
        image = data_item["image"]
        x = image[None]
        with torch.inference_mode():
            total = None
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                prob = torch.softmax(inference.inferer(xi, inference.network).float(), 1)
                prob = torch.flip(prob, dims) if dims else prob
                total = prob if total is None else total + prob
        data_item["pred"] = MetaTensor(total[0] / len(flips), meta=image.meta, applied_operations=image.applied_operations)
        labels = argmax_channels(torch.as_tensor(invert(data_item)["pred"])).numpy()
        if variant == "ensemble+post":
            labels = largest_components(labels, post["foreground"], post["classes"])
        seconds.append(time.perf_counter() - start)
        per_case[item["case_id"]] = case_dice(labels, reference, classes)
    return {
        "variant": variant,
        "members": len(getattr(inference.network, "names", [])) or 1,
        **mean_dice(per_case, bundle.labels),
        "seconds_per_case_median": round(statistics.median(seconds), 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_variant(bundle: str, variant: str, data: str | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", variant, "--bundle", bundle]
    if data:
        cmd += ["--data", data]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def through_inference_json(bundle: Path, data: str | None) -> dict[str, Any]:
    """The bundle's own inference.json on fold 0 with plain MONAI, its outputs scored."""
    from medseg.bundle import open_bundle
    from medseg.evaluation import score_folder

    b = open_bundle(bundle)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--bundle_root", ".", "--output_dir", tmp]  # fmt: skip
        if data:
            cmd += ["--dataset_dir", str(Path(data).resolve())]
        start = time.time()
        subprocess.run(cmd, cwd=bundle, check=True, capture_output=True)
        wall = time.time() - start
        dataset = data or _dataset_dir(b)
        scores = score_folder(tmp, dataset, 0, b.labels, suffix="_seg")
    scores.pop("per_case")
    return {**scores, "wall_seconds": round(wall, 1)}


def _dataset_dir(bundle: Any) -> str:
    from medseg.bundle.loader import read_inference_config

    return str(read_inference_config(bundle).get_parsed_content("dataset_dir"))


def ct_timing(bundle: Path) -> dict[str, Any]:
    from medseg import paths

    ct = paths.data_dir() / "dicom" / "ct-chest"
    out = {}
    for name, extra in (("member", ["--fast"]), ("ensemble", [])):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.time()
            subprocess.run([sys.executable, "-m", "medseg.cli.main", "segment", str(ct), "--bundle", str(bundle),
                            "--output", tmp, "--force", *extra], check=True, capture_output=True)  # fmt: skip
            out[f"{name}_seconds"] = round(time.time() - start, 1)
    out["ratio"] = round(out["ensemble_seconds"] / out["member_seconds"], 2)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default=str(REPO / "bundles" / "hippocampus_ensemble"))
    parser.add_argument("--data", default=None, help="dataset folder (default: the bundle's dataset_dir)")
    parser.add_argument("--ct", action="store_true", help="also time the 512x512x139 CT series")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=list(VARIANTS),
        help="variants to run (default all; ensemble+tta runs every member on 8 flips, the slowest)",
    )
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ensemble.json"))
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.bundle, args.worker, args.data)))
        return 0
    import torch

    bundle = Path(args.bundle).resolve()
    variants = [v for v in VARIANTS if v in args.variants]
    for needed in ("member", "ensemble+post"):  # the time ratio compares these two
        if needed not in variants:
            parser.error(f"--variants must include {needed}")
    rows = [run_variant(str(bundle), v, args.data) for v in variants]
    record = json.loads((bundle / "plans" / "ensemble.json").read_text())
    result = {
        "bundle": bundle.name,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{os.environ.get('OMP_NUM_THREADS', 'default')} threads",
        "variants": rows,
        "inference_json": through_inference_json(bundle, args.data),
        "cross_validation": record["choice"]["candidates"],
        "postprocessing": {k: record["choice"]["postprocessing"][k] for k in ("foreground", "classes")},
    }
    single = next(r for r in rows if r["variant"] == "member")["seconds_per_case_median"]
    full = next(r for r in rows if r["variant"] == "ensemble+post")["seconds_per_case_median"]
    result["ensemble_over_member_time"] = round(full / single, 2)
    if args.ct:
        result["ct_512x512x139"] = ct_timing(bundle)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results[bundle.name] = result
    out.write_text(json.dumps(results, indent=1) + "\n")
    names = list(rows[0]["dice"])
    print(f"{bundle.name} on fold 0 ({rows[0]['cases']} cases), {result['machine']}")
    print(f"{'variant':<15} {'members':>7} " + " ".join(f"{n[:22]:>22}" for n in names) + f" {'mean':>7} {'s/case':>7} {'RSS MB':>7}")
    for r in rows:
        print(f"{r['variant']:<15} {r['members']:>7} " + " ".join(f"{r['dice'][n]:>22.4f}" for n in names)
              + f" {r['mean_dice']:>7.4f} {r['seconds_per_case_median']:>7.3f} {r['peak_rss_mb']:>7.0f}")  # fmt: skip
    ij = result["inference_json"]
    print(f"inference.json (plain monai.bundle run): mean Dice {ij['mean_dice']:.4f} in {ij['wall_seconds']} s")
    print(f"ensemble / member time per case: {result['ensemble_over_member_time']}x")
    if "ct_512x512x139" in result:
        print(f"CT 512x512x139: {result['ct_512x512x139']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
