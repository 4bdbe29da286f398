"""Compatibility name: bundle configs say ``medseg.transforms.OneHotd``; the code is in :mod:`medseg.postprocess`.

Kept so that shipped and already trained bundles resolve their ``_target_`` unchanged; new code
imports from :mod:`medseg.postprocess`.
"""

from medseg.postprocess import OneHotd, argmax_channels

__all__ = ["OneHotd", "argmax_channels"]
