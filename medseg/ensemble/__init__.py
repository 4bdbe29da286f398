"""Cross-validation ensembles: members per fold, learned postprocessing, configuration choice.

Data flow, one module per stage (as nnU-Net's ``ensembling``, ``postprocessing`` and
``evaluation``): :mod:`~medseg.ensemble.cv` trains one member per non-test fold and saves its
out-of-fold probabilities; :mod:`~medseg.ensemble.postprocessing` decides nnU-Net's
connected-component steps on them; :mod:`~medseg.ensemble.choose` picks the best configuration or
pair by cross-validated Dice; :mod:`~medseg.ensemble.bundle` writes the chosen members as one bundle
whose network is :class:`~medseg.ensemble.network.EnsembleNetwork`. Fold 0 is never read.
"""

from medseg.ensemble.network import EnsembleNetwork

__all__ = ["EnsembleNetwork"]
