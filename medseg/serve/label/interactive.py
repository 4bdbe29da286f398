"""Interactive bundles served as MONAI Label's DeepEdit type (MONAI Label venv only).

An interactive bundle (``medseg plan --interactive``) is registered as an infer task of type
``deepedit``, so 3D Slicer's MONAI Label module shows its point tools. A request carries the clicks
the way DeepEdit's do: in ``params``, for each label name of ``/info/`` (``background`` included) a
list of ``[i, j, k]`` points, indices of the image's voxel array as stored (what 3D Slicer sends).
No clicks: the bundle segments on its own. The answer is the mask on the image's grid, as for any
bundle (:class:`~medseg.serve.label.infer.MedsegInferTask` does the rest).

The clicks are checked once the image is read (its stored shape is needed) by
:func:`medseg.interactive.parse_clicks`: unknown label names, malformed, non-integer or outside
points and more than :data:`medseg.interactive.MAX_CLICKS` points raise :class:`medseg.errors.InputError`,
which the server answers with 422 and the message (``medseg.serve.label.worker.error_status``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from medseg.bundle.core import open_bundle
from medseg.errors import BundleError
from medseg.interactive import MAX_CLICKS, AddClickGuidanced, parse_clicks
from medseg.interactive.session import is_interactive
from medseg.serve.label.infer import MedsegInferTask

__all__ = ["ClicksFromRequestd", "MedsegDeepEditTask", "infer_task_class"]

DEEPEDIT = "deepedit"  # MONAI Label's InferType.DEEPEDIT


def infer_task_class(path: str) -> type[MedsegInferTask]:
    """The infer task a bundle is served with: DeepEdit for an interactive bundle, else segmentation."""
    return MedsegDeepEditTask if is_interactive(open_bundle(path)) else MedsegInferTask


class ClicksFromRequestd:
    """Collect a request's clicks (``{label name: [[i, j, k], ...]}`` among its keys) under ``guidance``.

    Label names are matched without regard to case (MONAI Label lists them in lower case).

    Args:
        label_names: the names a click may carry, in the guidance channels' order.
        guidance: where the checked clicks go (what :class:`AddClickGuidanced` reads).
        max_clicks: the most points a request may carry.
    """

    def __init__(self, label_names: Sequence[str], guidance: str = "guidance", max_clicks: int = MAX_CLICKS):
        self.label_names = list(label_names)
        self.guidance = guidance
        self.max_clicks = max_clicks

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        by_lower = {name.lower(): name for name in self.label_names}
        params = {
            by_lower.get(key.lower(), key): value
            for key, value in d.items()
            if isinstance(key, str) and key not in ("image", self.guidance)
        }
        meta = getattr(d["image"], "meta", None) or {}
        shape = [int(s) for s in meta.get("spatial_shape", d["image"].shape[1:])][-3:]
        d[self.guidance] = parse_clicks(params, self.label_names, shape, self.max_clicks)
        return d


class MedsegDeepEditTask(MedsegInferTask):
    """An interactive bundle's inference under clicks (MONAI Label type ``deepedit``)."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        kwargs.setdefault("type", DEEPEDIT)
        super().__init__(path, conf, **kwargs)

    def pre_transforms(self, data=None):
        pre = list(super().pre_transforms(data))
        if not pre or not isinstance(pre[-1], AddClickGuidanced):
            raise BundleError(
                f"{self.bundle_path}: inference.json's preprocessing must end with "
                "medseg.interactive.AddClickGuidanced; re-render the bundle (medseg bundle check)"
            )
        pre.insert(len(pre) - 1, ClicksFromRequestd(list(pre[-1].label_names)))
        return pre

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["clicks"] = (
            "params: {label name or 'background': [[i, j, k], ...]}, voxel indices of the stored image; "
            f"at most {MAX_CLICKS} points; none: automatic segmentation"
        )
        return info
