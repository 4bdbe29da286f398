"""Training and evaluation on pytorch-ignite through MONAI's engines.

Bundles build MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` from their
configs; this package adds the handlers MONAI lacks (atomic checkpoints, resume,
CSV log, training-curve plot, progress bar, a wall-clock budget) and runs bundles for the CLI.
"""

from medseg.engine.budget import TimeBudget
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
    "TimeBudget",
    "TrainingCurvePlot",
    "prepare_plain_batch",
]
