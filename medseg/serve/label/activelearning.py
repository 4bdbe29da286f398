"""The ``disagreement`` active-learning strategy as MONAI Label lists it (MONAI Label venv only).

The work is done by medseg's ``POST /activelearning/disagreement`` route
(:mod:`medseg.serve.label.asgi`), which scores the unlabelled images in the inference worker
processes (the members of an ensemble take about a second per image on a CPU) and caches the
scores (:mod:`medseg.ensemble.disagreement`). This class makes ``/info/`` (and so 3D Slicer's
strategy list) name the strategy; called directly it refuses, saying where the route is.
"""

from __future__ import annotations

from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.strategy import Strategy

__all__ = ["Disagreement"]


class Disagreement(Strategy):
    """Next sample: the unlabelled image the cross-validation members of an ensemble disagree on most."""

    def __init__(self) -> None:
        super().__init__(
            "the unlabelled image whose cross-validation members disagree most (1 - mean pairwise Dice); "
            'params: {"model": an ensemble bundle}, default the first served ensemble'
        )

    def __call__(self, request, datastore):
        raise MONAILabelException(
            MONAILabelError.INVALID_INPUT,
            "the disagreement strategy runs through POST /activelearning/disagreement",
        )
