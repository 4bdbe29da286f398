"""nnU-Net's connected-component rule on constructed cases: a step is kept only when the mean Dice
over the classes rises and no class falls; ``LargestComponentsd`` applies the kept steps."""

from __future__ import annotations

import numpy as np
import torch

from medseg.ensemble.postprocessing import learn_postprocessing
from medseg.postprocess import LargestComponentsd, largest_components

LABELS = {0: "background", 1: "anterior", 2: "posterior"}


def _case(blob: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two touching structures; the prediction adds a far, one-voxel blob of label 1 when ``blob``."""
    reference = np.zeros((24, 24, 24), np.uint8)
    reference[4:10, 4:10, 4:10] = 1
    reference[10:14, 4:10, 4:10] = 2
    pred = reference.copy()
    pred[9, 4:10, 4:10] = 2  # a slightly wrong border, not a component of its own
    if blob:
        pred[20:22, 20:22, 20:22] = 1
    return pred, reference


def test_a_spurious_blob_is_removed_and_the_step_accepted() -> None:
    cases = [_case(blob=True) for _ in range(3)]
    decision = learn_postprocessing(cases, LABELS)
    assert decision["foreground"] is True
    first = decision["steps"][0]
    assert first["accepted"] and first["dice_after"][0] > first["dice_before"][0]
    assert first["dice_after"][1] == first["dice_before"][1]  # the other class is unchanged
    cleaned = largest_components(cases[0][0], foreground=True)
    assert int((cleaned[18:, 18:, 18:] != 0).sum()) == 0  # the blob is gone
    assert np.array_equal(cleaned[:16], cases[0][0][:16])  # the structures are untouched


def test_a_real_second_component_is_kept_when_removing_it_lowers_dice() -> None:
    # both hippocampi of a crop: label 1 really has two components, and the prediction finds both
    reference = np.zeros((24, 24, 24), np.uint8)
    reference[2:8, 2:8, 2:8] = 1
    reference[14:18, 14:18, 14:18] = 1
    reference[8:12, 2:8, 2:8] = 2
    cases = [(reference.copy(), reference) for _ in range(2)]
    decision = learn_postprocessing(cases, LABELS)
    assert decision["foreground"] is False and decision["classes"] == []
    assert all(not step["accepted"] for step in decision["steps"])
    step = decision["steps"][0]
    assert step["dice_after"][0] < step["dice_before"][0]  # removing it would have cost Dice


def test_a_class_step_is_kept_for_one_class_only() -> None:
    # the foreground step cannot help (the stray voxel of label 2 touches label 1's structure);
    # keeping label 2's largest component does, and label 1 has nothing to remove
    reference = np.zeros((20, 20, 20), np.uint8)
    reference[2:8, 2:8, 2:8] = 1
    reference[8:12, 2:8, 2:8] = 2
    pred = reference.copy()
    pred[2, 2, 2] = 2  # inside label 1's structure: one foreground component, two of label 2
    decision = learn_postprocessing([(pred, reference)] * 2, LABELS)
    assert decision["foreground"] is False
    assert decision["classes"] == [2]


def test_the_transform_keeps_metadata_and_matches_the_function() -> None:
    from monai.data import MetaTensor

    pred, _ = _case(blob=True)
    item = MetaTensor(torch.as_tensor(pred)[None], affine=torch.eye(4) * 2)
    out = LargestComponentsd("pred", foreground=True, classes=[2])({"pred": item})["pred"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, item.affine)
    assert np.array_equal(out[0].numpy(), largest_components(pred, True, [2]))
