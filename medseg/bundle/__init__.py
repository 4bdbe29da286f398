"""Run, evaluate, export and load medseg's MONAI bundles (``bundles/<name>``)."""

from medseg.bundle.core import REQUIRED_FILES, Bundle, open_bundle, run_workflow
from medseg.bundle.export import export_bundle
from medseg.bundle.loader import (
    STATE_DICT_KEYS,
    BundleInference,
    load_inference,
    load_weights,
    read_inference_config,
    read_state_dict,
)
from medseg.bundle.train import evaluate_bundle, train_bundle

__all__ = [
    "REQUIRED_FILES",
    "STATE_DICT_KEYS",
    "Bundle",
    "BundleInference",
    "open_bundle",
    "run_workflow",
    "train_bundle",
    "evaluate_bundle",
    "export_bundle",
    "load_inference",
    "load_weights",
    "read_inference_config",
    "read_state_dict",
]
