"""The fixed naive recipes that ``medseg plan`` must never lose to (issue 21), in one place.

A planner earns its keep only if it beats what a user would write without one, so the benchmarks
set it beside one fixed recipe per dimensionality, the same on every dataset:

* **2-D** (:func:`train_2d`, :func:`predict_2d`): every image resized to 256 x 256, MONAI ``UNet``
  (16-256 channels, 2 residual units), Dice-CE, AdamW 1e-3 with a cosine decay over the budget's
  wall clock, random flips only, batch 8; predictions resized back to each image's own size. RGB
  photographs feed 3 channels, grey images 1.
* **3-D** (:func:`train_3d`, :func:`predict_3d`): the MONAI model zoo's spleen_ct_segmentation
  recipe as ``benchmarks/train.py`` runs it against hippocampus_unet3d (its ``BASELINE_OVERRIDES``:
  UNet 16-256 with batch norm, Dice-CE without background, Novograd 2e-3 without schedule, crops by
  positive/negative label, 4 per image, batch 2) on the hippocampus_unet3d bundle's deterministic
  transforms (RAS, 1 mm, per-image z-score), data loaded in the training process. Its one
  adaptation to a dataset is the crop, as ``benchmarks/train.py`` adapted it to the hippocampus:
  the spleen's 96 x 96 x 96 where the median training image (at 1 mm) is larger, else the median
  shape rounded down to a multiple of 16 (the UNet's four strides): 32 x 48 x 32 on the hippocampus,
  96 x 80 x 96 on the left atrium. Sliding-window inference at the crop size (overlap 0.5, Gaussian),
  inverted to each case's original grid.

Both train on folds 2-4 for a wall-clock budget that counts their data loading, and stop before a
step would overrun it. Run on its own, this module trains one recipe and writes fold 0's
predictions for :func:`medseg.evaluation.score_folder` (``benchmarks/plan.py`` runs it pinned to a
core beside medseg)::

    python benchmarks/naive.py DATA --dims 2 --minutes 8 --output OUT
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

__all__ = [
    "NAIVE_2D_BATCH",
    "NAIVE_2D_LR",
    "NAIVE_2D_SIZE",
    "crop_size_3d",
    "predict_2d",
    "predict_3d",
    "read_image_2d",
    "train_2d",
    "train_3d",
]

NAIVE_2D_SIZE = 256
NAIVE_2D_BATCH = 8
NAIVE_2D_LR = 1e-3
# the spleen recipe's crop; the U-Net's four stride-2 levels need multiples of 16
SPLEEN_CROP = 96
CROP_MULTIPLE = 16
# benchmarks/train.py's recipes run on the hippocampus_unet3d bundle's grid
SPACING_MM = (1.0, 1.0, 1.0)


def _clock(start: float, minutes: float) -> Callable[[float | None], bool]:
    """``more(step_seconds)``: whether another step of that length ends inside the budget."""
    deadline = start + 60 * minutes

    def more(step_seconds: float | None) -> bool:
        return time.time() + (step_seconds or 0.0) < deadline

    return more


# ------------------------------------------------------------------------------------------------ 2-D


def read_image_2d(path: str, size: int | None, channels: int) -> tuple[np.ndarray, tuple[int, int]]:
    """An image as ``(channels, rows, columns)`` floats in [0, 1], resized to ``size`` squared.

    Args:
        path: a PNG or JPEG file.
        size: the side to resize to (bilinear), or None for the image's own size.
        channels: 3 reads RGB, 1 grey.

    Returns:
        The array and the image's own ``(rows, columns)``.
    """
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB" if channels == 3 else "L")
        shape = (img.size[1], img.size[0])
        if size is not None:
            img = img.resize((size, size), Image.BILINEAR)
        array = np.asarray(img, np.float32) / 255
    return (array.transpose(2, 0, 1) if array.ndim == 3 else array[None]), shape


def _label_2d(path: str, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as lab:
        return np.asarray(lab.resize((size, size), Image.NEAREST), np.int64)


def train_2d(
    items: Sequence[dict[str, Any]],
    channels: int,
    num_classes: int,
    minutes: float,
    start: float | None = None,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Train the naive 2-D recipe for ``minutes`` of wall clock from ``start``, data loading included.

    Args:
        items: the training cases (``image``, ``label`` paths).
        channels: image channels (3 for RGB photographs, 1 for grey images).
        num_classes: classes, background included.
        minutes: the wall-clock budget.
        start: ``time.time()`` when the budget began (default: now).
        seed: torch's seed (the initial weights) and the batches' and flips' draws.

    Returns:
        The network (in eval mode) and ``{"iterations", "seconds_per_step", "data_seconds"}``.
    """
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    start = time.time() if start is None else start
    more = _clock(start, minutes)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = np.stack([read_image_2d(item["image"], NAIVE_2D_SIZE, channels)[0] for item in items])
    y = np.stack([_label_2d(item["label"], NAIVE_2D_SIZE) for item in items])[:, None]
    data_s = time.time() - start
    net = UNet(
        2, channels, num_classes, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=NAIVE_2D_LR, weight_decay=1e-5)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    iterations, step_s, loop_start = 0, None, time.time()
    net.train()
    while iterations == 0 or more(step_s):
        fraction = min(1.0, (time.time() - start) / (60 * minutes))
        for group in optimizer.param_groups:
            group["lr"] = NAIVE_2D_LR * 0.5 * (1 + math.cos(math.pi * fraction))
        pick = rng.choice(len(x), min(NAIVE_2D_BATCH, len(x)), replace=False)
        xb, yb = torch.from_numpy(x[pick]), torch.from_numpy(y[pick])
        for axis in (2, 3):
            if rng.random() < 0.5:
                xb, yb = xb.flip(axis), yb.flip(axis)
        optimizer.zero_grad()
        loss_fn(net(xb), yb).backward()
        optimizer.step()
        iterations += 1
        step_s = (time.time() - loop_start) / iterations
    net.eval()
    return net, {
        "iterations": iterations,
        "seconds_per_step": round(step_s, 4),
        "data_seconds": round(data_s, 1),
    }


def predict_2d(net: Any, path: str, channels: int) -> np.ndarray:
    """The naive recipe's label map of one image on its own ``(rows, columns)`` grid.

    The image is resized to the training size, its class probabilities resized back (bilinear),
    then the most likely class taken.
    """
    import torch

    small, shape = read_image_2d(path, NAIVE_2D_SIZE, channels)
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(small)[None]), 1)
        probs = torch.nn.functional.interpolate(probs, size=shape, mode="bilinear")
    return probs[0].argmax(0).numpy().astype(np.uint8)


# ------------------------------------------------------------------------------------------------ 3-D


def _volume_transforms(keys: Sequence[str]) -> Any:
    """The hippocampus_unet3d bundle's deterministic transforms (``train#deterministic_transforms``),
    the grid and intensities benchmarks/train.py's spleen-style baseline trains on."""
    import torch
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        Spacingd,
    )

    keys = list(keys)
    modes = ["bilinear", "nearest"][: len(keys)]
    dtypes = [torch.float32, torch.uint8][: len(keys)]
    return Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=SPACING_MM, mode=modes),
            NormalizeIntensityd("image", nonzero=False, channel_wise=True),
            EnsureTyped(keys, dtype=dtypes),
        ]
    )


def crop_size_3d(shapes: Sequence[Sequence[int]]) -> list[int]:
    """The spleen recipe's 96-voxel crop, cut to the median image shape rounded down to 16s.

    Args:
        shapes: the training images' spatial shapes on the recipe's grid.
    """
    median = np.median(np.asarray(shapes), axis=0)
    return [int(max(CROP_MULTIPLE, min(SPLEEN_CROP, CROP_MULTIPLE * (m // CROP_MULTIPLE)))) for m in median]


def _spleen_parser(num_classes: int, crop: Sequence[int]) -> Any:
    """A MONAI config parser holding benchmarks/train.py's spleen-style recipe for this dataset."""
    from monai.bundle import ConfigParser

    sys.path.insert(0, str(HERE))
    from train import BASELINE_OVERRIDES

    recipe = BASELINE_OVERRIDES
    return ConfigParser(
        {
            "num_classes": num_classes,
            "roi_size": list(crop),
            "network": {**recipe["network_def"]},
            "loss": recipe["loss"],
            "optimizer": recipe["optimizer"],
            "batch_size": recipe["batch_size"],
            "random_transforms": recipe["train#random_transforms"],
            "inferer": {
                # the bundle's validation inferer, through which train.py scores the baseline
                "_target_": "SlidingWindowInferer",
                "roi_size": "@roi_size",
                "sw_batch_size": 4,
                "overlap": 0.5,
                "mode": "gaussian",
            },
        }
    )


def train_3d(
    items: Sequence[dict[str, Any]], num_classes: int, minutes: float, start: float | None = None
) -> tuple[Any, dict[str, Any]]:
    """Train benchmarks/train.py's spleen-style recipe for ``minutes`` of wall clock from ``start``.

    Args:
        items: the training cases (``image``, ``label`` paths).
        num_classes: classes, background included.
        minutes: the wall-clock budget, data loading included.
        start: ``time.time()`` when the budget began (default: now).

    Returns:
        The network (in eval mode) and ``{"iterations", "seconds_per_step", "data_seconds",
        "patch_size", "batch_size", "inferer"}`` (the last the sliding-window inferer for
        :func:`predict_3d`).
    """
    from monai.data import DataLoader, Dataset
    from monai.transforms import Compose
    from monai.utils import set_determinism

    start = time.time() if start is None else start
    more = _clock(start, minutes)
    set_determinism(seed=0)
    prepare = _volume_transforms(["image", "label"])
    cached = [prepare({"image": item["image"], "label": item["label"]}) for item in items]
    crop = crop_size_3d([c["image"].shape[1:] for c in cached])
    parser = _spleen_parser(num_classes, crop)
    batch_size = int(parser.get_parsed_content("batch_size"))
    loader = DataLoader(
        Dataset(cached, Compose(parser.get_parsed_content("random_transforms"))),
        batch_size=batch_size,
        shuffle=True,
        num_workers=0,  # train.py's faster variant on 2 cores; here the process has one
    )
    data_s = time.time() - start
    net = parser.get_parsed_content("network")
    optimizer = parser.get_parsed_content("optimizer")
    loss_fn = parser.get_parsed_content("loss")
    iterations, step_s, loop_start = 0, None, time.time()
    net.train()
    while iterations == 0 or more(step_s):
        for batch in loader:
            optimizer.zero_grad()
            loss_fn(net(batch["image"]), batch["label"]).backward()
            optimizer.step()
            iterations += 1
            step_s = (time.time() - loop_start) / iterations
            if not more(step_s):
                break
    net.eval()
    return net, {
        "iterations": iterations,
        "seconds_per_step": round(step_s, 4),
        "data_seconds": round(data_s, 1),
        "patch_size": crop,
        "batch_size": batch_size,
        "inferer": parser.get_parsed_content("inferer"),
    }


def predict_3d(net: Any, inferer: Any, items: Sequence[dict[str, Any]], output: Path) -> None:
    """Write ``<image name>_seg.nii.gz`` per case: the argmax of the softmax on each case's original grid.

    Args:
        net: the trained network.
        inferer: the sliding-window inferer of :func:`train_3d`.
        items: the cases to predict (``image`` paths).
        output: the folder to write.
    """
    import numpy
    import torch
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd, SaveImaged

    prepare = _volume_transforms(["image"])
    post = Compose(
        [
            Activationsd("pred", softmax=True),
            Invertd("pred", transform=prepare, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", argmax=True),
            SaveImaged(
                "pred",
                output_dir=str(output),
                output_postfix="seg",
                output_dtype=numpy.uint8,
                separate_folder=False,
                resample=False,
                print_log=False,
            ),
        ]
    )
    with torch.no_grad():
        for item in items:
            data = prepare({"image": item["image"]})
            data["pred"] = inferer(data["image"][None], net)[0]
            post(data)


# ----------------------------------------------------------------------------------------------- main


def run(data: Path, dims: int, minutes: float, output: Path, start: float | None = None) -> dict[str, Any]:
    """Train the naive recipe of ``dims`` on folds 2-4, write fold 0's predictions to ``output/test_fold``.

    Returns:
        What the run did and its times: ``train_seconds`` from ``start`` to the end of training,
        ``test_inference_seconds`` for fold 0.
    """
    import torch

    from medseg.data import split_folds
    from medseg.data.dataset import load_datalist, open_dataset

    start = time.time() if start is None else start
    torch.set_num_threads(1)
    spec = open_dataset(data)
    datalist = load_datalist(data)
    train, test = split_folds(datalist, [2, 3, 4]), split_folds(datalist, 0)
    folder = output / "test_fold"
    folder.mkdir(parents=True, exist_ok=True)
    if dims == 2:
        channels = 3 if spec.is_rgb else spec.num_channels
        net, info = train_2d(train, channels, len(spec.labels), minutes, start)
        train_s = time.time() - start
        from PIL import Image

        for item in test:
            ending = Path(item["label"]).suffix
            Image.fromarray(predict_2d(net, item["image"], channels)).save(
                folder / f"{item['case_id']}{ending}"
            )
        recipe = f"2-D UNet 16-256 at {NAIVE_2D_SIZE}x{NAIVE_2D_SIZE}, batch {NAIVE_2D_BATCH}, AdamW cosine"
        info.update(patch_size=[NAIVE_2D_SIZE, NAIVE_2D_SIZE], batch_size=NAIVE_2D_BATCH)
    else:
        net, info = train_3d(train, len(spec.labels), minutes, start)
        train_s = time.time() - start
        predict_3d(net, info.pop("inferer"), test, folder)
        recipe = "spleen-style 3-D UNet 16-256, Novograd, pos/neg crops"
    return {
        "recipe": recipe,
        "network": "UNet",
        **info,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_seconds": round(train_s, 1),
        "test_inference_seconds": round(time.time() - start - train_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data", type=Path, help="dataset folder (MSD or nnU-Net raw layout)")
    parser.add_argument("--dims", type=int, choices=(2, 3), required=True)
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock budget of the training")
    parser.add_argument("--output", type=Path, required=True, help="writes test_fold/ and result.json")
    parser.add_argument("--start", type=float, help="time.time() when the budget began (default: now)")
    args = parser.parse_args()
    result = run(args.data, args.dims, args.minutes, args.output, args.start)
    (args.output / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
