"""Run, evaluate and export medseg's MONAI bundles (``bundles/<name>``)."""

from medseg.bundle.core import REQUIRED_FILES, Bundle, open_bundle, run_workflow
from medseg.bundle.export import export_bundle
from medseg.bundle.train import evaluate_bundle, train_bundle

__all__ = [
    "REQUIRED_FILES",
    "Bundle",
    "open_bundle",
    "run_workflow",
    "train_bundle",
    "evaluate_bundle",
    "export_bundle",
]
