"""Resolution traded for time: nnU-Net's ``3d_lowres`` idea applied to the clock.

nnU-Net plans a coarser ``3d_lowres`` configuration when the full-resolution patch covers too little
of the images. On a CPU with a wall-clock budget the scarce thing is not memory but the number of
samples a training can see: a full-resolution network that sees each training image a handful of
times learns less than one that sees it sixty times at half the resolution (on 300 colonoscopy
photographs and 8 CPU minutes, a naive U-Net at 192 x 192 scored Dice 0.61 where the planned
full-resolution network scored 0.42). The rule here chooses the resolution by that count:

* candidates: the full resolution, then each axis scaled by 1/sqrt(2), 1/2, 1/(2 sqrt(2)) and 1/4
  (a larger target spacing for volumes; for photographs, which have no spacing, a fixed square
  target size every image is resized to: the median image's geometric-mean side, scaled, and then
  the training patch itself when one patch holds the whole image), while the median image keeps at
  least :data:`MIN_SCALED_EDGE` voxels per axis;
* for each, the planner's usual search (network width, patch, batch) at that scale gives a step
  time; the training then sees ``views = epochs within the budget x coverage`` full views of each
  training image, where coverage is the share of the median image one patch holds (at most 1);
* the finest candidate whose views reach what the dataset needs, :data:`NEEDED_VIEWS` (the epochs
  the hippocampus recipe needed to converge, ``MIN_EPOCHS``), is chosen; when none does, the one
  with the most views;
* photographs put width before resolution: where a coarser scale lets a wider network of the
  budget's ladder see enough, that wider network is taken at the finest scale it sees enough at
  (views beyond what a training needs buy little; features to tell a polyp's colour and texture
  from the mucosa's buy more: :data:`WIDTH_EVIDENCE`). Volumes keep the finest scale: their plans
  beat the fixed recipes at 8 minutes, and a coarser grid blurs the thin
  structures (hippocampus, atrial wall) that resolution resolves.

A budget that does not plan for time (a GPU plan, sized by memory) always sees enough, so it keeps
the full resolution; so do plans whose full-resolution patch fits the budget with the whole image
in view (the shipped hippocampus and left-atrium plans). Predictions are mapped back to each image's
own grid: for volumes through the spacing transform's inverse, for photographs by resizing back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from medseg.plan.budget import MIN_EPOCHS, Budget, CpuBudget
from medseg.plan.values import planned
from medseg.plan.values import rounded as _r

__all__ = [
    "MIN_SCALED_EDGE",
    "NEEDED_VIEWS",
    "RESOLUTION_SCALES",
    "Resolution",
    "choose_resolution",
    "scaled_shape",
]

# Each axis scaled by 2^(-k/2): the full resolution, then halving the voxels per step in 2-D.
RESOLUTION_SCALES = (1.0, 2**-0.5, 0.5, 2**-1.5, 0.25)
# A coarser candidate keeps at least this many voxels along each axis of the median image.
MIN_SCALED_EDGE = 32
# What decided width before resolution for photographs (Kvasir-SEG dev, test fold never looked at).
WIDTH_EVIDENCE = (
    "on Kvasir-SEG dev fold 1, 30 minutes on one core, 16 base features at 224 x 224 (151 epochs) scored Dice 0.773 "
    "where 8 base features at 320 x 320 (102 epochs) scored 0.713"
)
# Full views of each training image a training needs: the hippocampus recipe's validation Dice
# peaked after 60 epochs of whole-image patches.
NEEDED_VIEWS = MIN_EPOCHS


class _Geometry(Protocol):
    spacing: list[float]
    median_shape: list[float]


class _Found(Protocol):
    width: Any
    patch: list[int]
    batch: int
    cost: dict[str, Any]
    over_budget: bool


@dataclass(frozen=True)
class Resolution:
    """The chosen resolution and the search result at it.

    Attributes:
        scale: the factor each axis was scaled by (1: full resolution).
        geometry: the planner's geometry at that scale (spacing divided by ``scale``).
        found: the planner's candidate at that scale.
        value: the plan entry (``{"value", "rule", "data"}``) recording the choice and every
            candidate looked at.
    """

    scale: float
    geometry: Any
    found: Any
    value: dict[str, Any]


def scaled_shape(median_shape: Sequence[float], scale: float) -> list[int]:
    """The median image shape at a scale, rounded to whole voxels.

    Args:
        median_shape: the median image shape at full resolution.
        scale: the factor along each axis.
    """
    return [max(1, int(round(s * scale))) for s in median_shape]


def _views(
    found: _Found, budget: Budget, steps_per_epoch: int, median_shape: Sequence[float]
) -> dict[str, Any]:
    """What a candidate sees in the budget: epochs, coverage of the median image, full views."""
    epochs, _ = budget.epochs(found.cost, steps_per_epoch)
    coverage = min(1.0, math.prod(found.patch) / max(1.0, math.prod(median_shape)))
    return {"epochs_in_budget": int(epochs), "coverage": _r(coverage, 3), "views": _r(epochs * coverage, 3)}


def choose_resolution(
    geometry: _Geometry,
    search: Callable[[Any], _Found],
    rescale: Callable[[Any, float], Any],
    budget: Budget,
    samples_per_epoch: int,
    photographs: bool,
    describe: Callable[[_Found], Mapping[str, Any]] = lambda found: {},
) -> Resolution:
    """The finest resolution whose training sees each image :data:`NEEDED_VIEWS` times in the budget.

    Args:
        geometry: the planner's full-resolution geometry (``spacing``, ``median_shape``).
        search: the planner's search for a network, patch and batch at a geometry.
        rescale: the geometry at a scale (spacing / scale, median shape x scale).
        budget: the compute budget (its ``epochs`` says how many fit).
        samples_per_epoch: samples an epoch draws (training cases, or slices of them).
        photographs: the images have no spacing: a coarser scale is a fixed target size, and width comes
            before resolution.
        describe: what else to record of a candidate (network width, parameters).

    Returns:
        The chosen scale, its geometry and candidate, and the plan entry with every candidate's data.
    """
    rows: list[dict[str, Any]] = []
    looked: list[tuple[float, Any, _Found, dict[str, Any]]] = []
    scales = RESOLUTION_SCALES if isinstance(budget, CpuBudget) else RESOLUTION_SCALES[:1]
    for scale in scales:
        scaled = geometry if scale == 1.0 else rescale(geometry, scale)
        if scale != 1.0 and min(scaled.median_shape) < MIN_SCALED_EDGE:
            break
        found = search(scaled)
        steps_per_epoch = math.ceil(samples_per_epoch / found.batch)
        seen = _views(found, budget, steps_per_epoch, scaled.median_shape)
        row = {
            "scale": _r(scale, 3),
            "spacing": [_r(s) for s in scaled.spacing],
            "median_shape": scaled_shape(scaled.median_shape, 1.0),
            "patch_size": list(found.patch),
            "batch_size": found.batch,
            "seconds_per_step": found.cost.get("seconds_per_step"),
            **seen,
            **describe(found),
        }
        rows.append(row)
        looked.append((scale, scaled, found, row))
        if seen["views"] >= NEEDED_VIEWS and not (photographs and _rung(budget, found) > 0):
            break  # photographs look further while a coarser scale may fit a wider network
    enough = [item for item in looked if item[3]["views"] >= NEEDED_VIEWS]
    if photographs:  # the widest network that sees enough, at the finest scale it does
        enough.sort(key=lambda item: _rung(budget, item[2]))
    scale, scaled, found, row = enough[0] if enough else max(looked, key=lambda item: item[3]["views"])
    target_size = None
    if photographs and scale != 1.0:  # the whole photograph in one patch, or its scaled median size
        target_size = list(found.patch) if row["coverage"] >= 1.0 else scaled_shape(scaled.median_shape, 1.0)
    value = {
        "scale": _r(scale, 3),
        "target_spacing": None if photographs else [_r(s, 6) for s in scaled.spacing],
        "target_size": target_size,
    }
    return Resolution(
        scale,
        scaled,
        found,
        planned(value, _rule(photographs, bool(enough)), candidates=rows, needed_views=NEEDED_VIEWS),
    )


def _rung(budget: Budget, found: _Found) -> int:
    """The found network's rung on the budget's ladder for photographs (0: the widest)."""
    return budget.ladder_for(True).index(found.width)


def _rule(photographs: bool, enough: bool) -> str:
    coarser = (
        "photographs have no spacing, so a coarser scale is a fixed square target size every image is resized to "
        "for training and inference (the median image's geometric-mean side times the scale, then the training "
        "patch when one patch holds the whole image), predictions resized back to each image's own size; a CPU "
        "plan's patch is the whole resized image, never a crop of it (a coarser scale, not a crop, makes it fit)"
        if photographs
        else "a coarser scale is a larger target spacing, predictions mapped back to each image's own grid"
    )
    rule = (
        "resolution for time (nnU-Net's 3d_lowres applied to the clock): from the full resolution down by "
        f"1/sqrt(2) per step (at least {MIN_SCALED_EDGE} voxels per axis of the median image), the finest scale at "
        f"which the training sees each training image at least {NEEDED_VIEWS} times within the budget (views = "
        "epochs that fit x the share of the median image one patch covers; the hippocampus recipe converged "
        f"after {NEEDED_VIEWS} epochs of whole-image patches); {coarser}"
    )
    if photographs:
        rule += (
            "; for photographs width before resolution: the widest network of the ladder that sees each image that "
            "often at some scale, at the finest such scale (a photograph's classes are told apart by colour and "
            f"texture, which more features learn; {WIDTH_EVIDENCE})"
        )
    if not enough:
        rule += "; no scale reaches it, so the one with the most views is taken (raise --max-minutes)"
    return rule + "; a budget that does not plan for time (GPU memory) keeps the full resolution"
