"""Datasets and datalists: MSD ``dataset.json`` files and the fixed 5-fold split."""

from medseg.data.datalist import (
    DEFAULT_NUM_FOLDS,
    case_id,
    default_data_dir,
    fold_of_cases,
    load_msd_datalist,
    msd_labels,
    split_folds,
)

__all__ = [
    "DEFAULT_NUM_FOLDS",
    "case_id",
    "default_data_dir",
    "fold_of_cases",
    "load_msd_datalist",
    "msd_labels",
    "split_folds",
]
