"""An interactive bundle loaded once, answering clicks on an image: :class:`ClickPredictor`.

The click protocol (:mod:`medseg.interactive.protocol`) and the MONAI Label ``deepedit`` task both
ask the same question many times per image: given these clicks, what is the mask on the image's
own grid? The bundle's preprocessing up to the guidance channels runs once per image
(:meth:`ClickPredictor.prepare`); each click then costs the guidance channels, one network pass
and the inversion back to the stored grid (:meth:`ClickPredictor.predict`). It uses the bundle's
own ``inference.json`` objects (:func:`medseg.bundle.loader.load_inference`), so what is measured
is what ``medseg segment`` and the server run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medseg.bundle.core import Bundle
from medseg.errors import BundleError
from medseg.interactive.guidance import AddClickGuidanced

__all__ = ["ClickPredictor", "interactive_spec", "is_interactive"]


def interactive_spec(bundle: Bundle) -> dict[str, Any] | None:
    """The ``interactive`` block of a bundle's metadata (label names, sigma), or None for a plain bundle."""
    spec = bundle.metadata.get("interactive")
    return dict(spec) if isinstance(spec, Mapping) and spec.get("label_names") else None


def is_interactive(bundle: Bundle) -> bool:
    """Whether the bundle's network reads guidance channels (a ``medseg plan --interactive`` bundle)."""
    return interactive_spec(bundle) is not None


class ClickPredictor:
    """A bundle's network that segments an image under clicks.

    Args:
        bundle: an interactive bundle.
        device: where the network runs.
        weights: weights to use instead of ``models/model.pt``.

    Raises:
        BundleError: the bundle has no guidance channels (not interactive), or its inference config
            does not end its preprocessing with :class:`AddClickGuidanced`.
    """

    def __init__(self, bundle: Bundle, device: Any = "cpu", weights: str | os.PathLike | None = None) -> None:
        from monai.transforms import Compose, Invertd

        from medseg.bundle.loader import load_inference
        from medseg.networks import PadBatch

        spec = interactive_spec(bundle)
        if spec is None:
            raise BundleError(
                f"bundle {bundle.name} has no guidance channels: clicks need an interactive bundle "
                "(medseg plan DATASET --interactive); evaluate this one without --clicks",
                param="clicks",
            )
        self.bundle = bundle
        self.label_names: dict[str, int] = {str(k): int(v) for k, v in spec["label_names"].items()}
        self.inference = load_inference(bundle, device=device, weights=weights)
        transforms = list(self.inference.preprocessing.transforms)
        if not transforms or not isinstance(transforms[-1], AddClickGuidanced):
            raise BundleError(
                f"bundle {bundle.name}: inference.json's preprocessing must end with "
                "medseg.interactive.AddClickGuidanced; re-render it (medseg bundle check)"
            )
        self.device = next(self.inference.network.parameters()).device
        # single windows on CPU run faster in a batch of two (see PadBatch)
        self._network = PadBatch(self.inference.network).eval()
        self._load = Compose(transforms[:-1])
        self._guide = transforms[-1]
        self._invert = Invertd(keys="pred", transform=self.inference.preprocessing, orig_keys="image",
                               nearest_interp=False, to_tensor=True)  # fmt: skip

    def prepare(self, image: str | os.PathLike | Any) -> dict[str, Any]:
        """The bundle's preprocessing of ``image`` (a file path) up to the guidance channels."""
        return self._load({"image": str(image) if isinstance(image, os.PathLike) else image})

    def predict(
        self, prepared: Mapping[str, Any], clicks: Mapping[str, Sequence[Sequence[int]]]
    ) -> np.ndarray:
        """The label map on the stored image's grid under ``clicks``.

        Args:
            prepared: :meth:`prepare`'s output for the image.
            clicks: ``{label name or "background": [[i, j, k], ...]}`` in the stored array's voxel
                indices (checked by :func:`medseg.interactive.parse_clicks` where they come from users).
        """
        import torch
        from monai.data import MetaTensor

        d = self._guide({**prepared, "guidance": dict(clicks)})
        image = d["image"]
        with torch.no_grad():
            logits = self.inference.inferer(image.as_tensor()[None].to(self.device), self._network)
        probs = torch.softmax(logits[0].float().cpu(), dim=0)
        d["pred"] = MetaTensor(probs, meta=image.meta, applied_operations=image.applied_operations)
        inverted = self._invert(d)["pred"]
        return np.asarray(torch.argmax(inverted, dim=0), dtype=np.uint8)
