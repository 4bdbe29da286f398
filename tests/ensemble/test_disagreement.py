"""Members' disagreement (:mod:`medseg.ensemble.disagreement`): the score, its cache, and the shipped
hippocampus ensemble's members on a real image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.ensemble.disagreement import (
    ScoreCache,
    image_disagreement,
    members_version,
    pairwise_disagreement,
    require_members,
)
from medseg.errors import BundleError

REPO = Path(__file__).resolve().parents[2]


def test_the_score_is_one_minus_the_mean_pairwise_dice():
    mask = np.zeros((2, 8, 8), dtype=int)
    mask[0, 2:6, 2:6] = 1
    mask[1, 2:6, 2:6] = 2
    same = np.stack([mask, mask, mask])
    assert pairwise_disagreement(same, [1, 2]) == 0.0
    apart = np.stack([mask, np.where(mask > 0, 3 - mask, 0)])  # the two labels swapped: nothing shared
    assert pairwise_disagreement(apart, [1, 2]) == 1.0
    empty = np.zeros((3, 4, 4), dtype=int)
    assert pairwise_disagreement(empty, [1]) == 0.0  # all find nothing: they agree
    half = mask.copy()
    half[0, 2:6, 2:4] = 0  # one member finds half of label 1
    score = pairwise_disagreement(np.stack([mask, half]), [1, 2])
    assert score == pytest.approx(1 - (2 * 8 / 24 + 1.0) / 2)
    with pytest.raises(ValueError, match="two members"):
        pairwise_disagreement(mask[None], [1])


def test_scores_are_cached_per_members_version(tmp_path: Path):
    weights = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for w in weights:
        w.write_bytes(b"x")
    version = members_version(weights)
    cache = ScoreCache(tmp_path / "scores.json", version)
    cache.scores["case_1"] = 0.25
    cache.save()
    assert ScoreCache(tmp_path / "scores.json", version).scores == {"case_1": 0.25}
    weights[1].write_bytes(b"retrained")
    assert ScoreCache(tmp_path / "scores.json", members_version(weights)).scores == {}


@pytest.mark.needs_data
def test_the_shipped_ensembles_members_disagree_a_little_and_a_single_network_is_refused(
    hippocampus_dir: Path,
):
    import torch

    from medseg.bundle.core import open_bundle
    from medseg.bundle.loader import load_inference

    torch.set_num_threads(1)
    bundle = open_bundle(REPO / "bundles" / "hippocampus_ensemble")
    inference = load_inference(bundle)
    require_members(inference.network, bundle.name)
    image = sorted((hippocampus_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[1]  # fold 1
    score = image_disagreement(inference, image, [1, 2])
    assert 0.0 < score < 0.3  # trained members mostly agree, never exactly
    with pytest.raises(BundleError, match="no cross-validation members"):
        require_members(torch.nn.Conv3d(1, 3, 1), "hippocampus_unet3d")
