"""Where an ensemble is unsure: how much its cross-validation members disagree on an image.

Why: a clinician's next image to label should be one the model gets wrong, and the members of a
cross-validation ensemble, each trained on a different part of the data, disagree most where the
model is unsure (query by committee). The score of an image is one minus the mean Dice between the
class maps of every pair of members (averaged over the foreground classes; two members that both
find a class absent agree on it): 0 when all members draw the same mask, near 1 when they share
nothing. MONAI Label's ``/activelearning/disagreement`` ranks the unlabelled images by it
(:mod:`medseg.serve.label.activelearning`); ``benchmarks/disagreement.py`` measures how well it
predicts the ensemble's actual error on the test fold.

Scores are cached per image and model version (:class:`ScoreCache`): the version is a digest of the
members' weight files, so a retrained member makes every score stale.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import BundleError
from medseg.io.atomic import atomic_write_json

__all__ = ["ScoreCache", "members_version", "pairwise_disagreement", "image_disagreement", "require_members"]


def pairwise_disagreement(classes: np.ndarray, labels: Sequence[int]) -> float:
    """One minus the mean pairwise Dice of the members' class maps.

    Args:
        classes: the members' class maps, shape (members, *spatial).
        labels: the foreground class values to compare.

    Raises:
        ValueError: fewer than two members.
    """
    if classes.shape[0] < 2:
        raise ValueError("disagreement needs at least two members")
    masks = [[classes[m] == value for value in labels] for m in range(classes.shape[0])]
    dices = []
    for a, b in itertools.combinations(range(classes.shape[0]), 2):
        for mask_a, mask_b in zip(masks[a], masks[b], strict=True):
            total = int(mask_a.sum()) + int(mask_b.sum())
            dices.append(1.0 if total == 0 else 2.0 * int(np.logical_and(mask_a, mask_b).sum()) / total)
    return float(1.0 - np.mean(dices))


def require_members(network: Any, model: str) -> None:
    """Refuse a network without cross-validation members.

    Raises:
        BundleError: saying how to get members.
    """
    if not hasattr(network, "member_classes") or len(getattr(network, "weight_files", [])) < 2:
        raise BundleError(
            f"model {model!r} has no cross-validation members to disagree: train them "
            "(medseg train BUNDLE --cv) and serve the ensemble bundle (medseg ensemble choose)"
        )


def image_disagreement(inference: Any, image: str | os.PathLike, labels: Sequence[int]) -> float:
    """The disagreement of an ensemble bundle's members on one image.

    Args:
        inference: the ensemble's :class:`medseg.bundle.loader.BundleInference`.
        image: the image file.
        labels: foreground class values.
    """
    import torch

    data = inference.preprocessing({"image": str(image)})
    x = data["image"] if isinstance(data, dict) else data
    device = next(inference.network.parameters()).device
    with torch.no_grad():
        classes = inference.network.member_classes(torch.as_tensor(x)[None].to(device))
    return pairwise_disagreement(classes[:, 0].cpu().numpy(), labels)


def members_version(weight_files: Iterable[str | os.PathLike]) -> str:
    """A digest of the members' weight files (name, size, modification time)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in weight_files):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


class ScoreCache:
    """Disagreement scores of one model's version, kept in a JSON file (written atomically).

    Args:
        path: the cache file.
        version: the model version (:func:`members_version`); a file of another version is ignored.
    """

    def __init__(self, path: str | os.PathLike, version: str) -> None:
        self.path = Path(path)
        self.version = version
        self.scores: dict[str, float] = {}
        try:
            found = json.loads(self.path.read_text())
        except (OSError, ValueError):
            found = {}
        if isinstance(found, dict) and found.get("version") == version:
            self.scores = {str(k): float(v) for k, v in found.get("scores", {}).items()}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, {"version": self.version, "scores": self.scores})
