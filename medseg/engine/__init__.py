"""Training and evaluation on pytorch-ignite through MONAI's engines.

Bundles build MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` from their
configs; this package adds the handlers MONAI lacks (atomic checkpoints, resume,
CSV log, training-curve plot, progress bar) and runs bundles for the CLI.
"""

from medseg.engine.handlers import (
    AtomicCheckpointSaver,
    CaseLog,
    CSVLogger,
    ModelEMA,
    ProgressBar,
    ResumeFromLatest,
    TrainingCurvePlot,
)
from medseg.engine.prepare_batch import prepare_plain_batch

__all__ = [
    "AtomicCheckpointSaver",
    "CaseLog",
    "CSVLogger",
    "ModelEMA",
    "ProgressBar",
    "ResumeFromLatest",
    "TrainingCurvePlot",
    "prepare_plain_batch",
]
