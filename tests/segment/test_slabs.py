"""``medseg.segment.slabs``: the slab-by-slab sliding window gives the whole-volume labels exactly.

* window positions equal MONAI's ``dense_patch_slices`` for many sizes, windows and overlaps;
* on random volumes with a random network, the slab labels equal ``argmax`` of MONAI's
  ``SlidingWindowInferer`` over the whole volume (gaussian and constant blending, several overlaps);
* ``Segmenter(low_memory=True)`` writes the same label map as the default on a real hippocampus
  series, with a window small enough that the volume takes several slabs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers import SlidingWindowInferer

from medseg.postprocess import argmax_channels
from medseg.segment.slabs import slab_argmax, window_starts

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.625, 0.9])
def test_window_starts_are_monais(overlap: float) -> None:
    for roi in (1, 5, 16, 32):
        for size in range(roi, roi * 5 + 3):
            interval = max(int(roi * (1 - overlap)), 1) if roi != size else roi
            want = sorted({s[0].start for s in dense_patch_slices([size], [roi], [interval])})
            assert window_starts(size, roi, overlap) == want, (size, roi, overlap)


@pytest.mark.parametrize(
    ("overlap", "mode", "size"),
    [
        (0.5, "gaussian", 70),
        (0.25, "gaussian", 61),
        ((0.5, 0.5, 0.75), "gaussian", 83),
        (0.5, "constant", 47),
    ],
)
def test_slabs_equal_the_whole_volume(overlap, mode: str, size: int) -> None:
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 1)
    )
    inputs = torch.randn(1, 1, 21, 12, size)  # 12 < roi along y: padded, as in the whole volume
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), sw_batch_size=3, overlap=overlap, mode=mode)
    with torch.inference_mode():
        whole = argmax_channels(inferer(inputs, network)[0])
        slabs = slab_argmax(inputs, network, inferer, lambda scores: argmax_channels(scores), windows=3)
    assert slabs is not None and slabs.shape == whole.shape
    assert torch.equal(slabs, whole)


def test_one_slab_volume_runs_as_usual() -> None:
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), overlap=0.5)
    assert slab_argmax(torch.zeros(1, 1, 8, 8, 30), torch.nn.Identity(), inferer, argmax_channels) is None


@pytest.mark.needs_data
def test_low_memory_segmenter_writes_the_same_labels(shared_data: Path) -> None:
    from medseg.segment import Segmenter

    series = shared_data / "dicom" / "hippocampus-crops" / "Study1"
    labels = {}
    for low_memory in (False, True):
        segmenter = Segmenter(BUNDLE, low_memory=low_memory)
        segmenter.inferer.roi_size = (32, 32, 8)  # several slabs along the last axis of the grid
        prediction = segmenter.predict_input(series)
        labels[low_memory] = prediction.labelmap
        assert segmenter.settings()["low_memory"] is low_memory
    assert len(window_starts(prediction.net_shape[-1], 8, 0.5)) > 4  # more than one slab of 4 windows
    assert labels[True].any()
    np.testing.assert_array_equal(labels[True], labels[False])
