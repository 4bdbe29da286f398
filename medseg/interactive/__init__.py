"""Interactive (click-guided) segmentation: clicks as guidance channels and the click protocol.

An interactive bundle (``medseg plan --interactive``, :class:`medseg.render.interactive.InteractiveTemplate`)
is a DeepEdit-style network: the image plus one guidance channel per label name. This package holds
what every user of such a bundle shares: the clicks' format, checks and guidance channels
(:mod:`~medseg.interactive.guidance`), a loaded bundle that answers clicks on an image
(:mod:`~medseg.interactive.session`) and the standard click protocol that ``medseg evaluate --clicks``
runs (:mod:`~medseg.interactive.protocol`).
"""

from __future__ import annotations

from medseg.interactive.guidance import (
    BACKGROUND,
    MAX_CLICKS,
    AddClickGuidanced,
    GuidanceToJSONd,
    guidance_label_names,
    parse_clicks,
    warm_start,
)

__all__ = [
    "BACKGROUND",
    "MAX_CLICKS",
    "AddClickGuidanced",
    "GuidanceToJSONd",
    "guidance_label_names",
    "parse_clicks",
    "warm_start",
]
