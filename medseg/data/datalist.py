"""MSD ``dataset.json`` datalists and the project's fixed cross-validation split.

The split is fixed for every accuracy figure medseg reports: sort the case ids,
then fold ``k`` holds the cases whose index ``% num_folds == k``. Fold 0 is the
validation fold results are reported on; folds 1-4 train.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import InputError

__all__ = [
    "DEFAULT_NUM_FOLDS",
    "default_data_dir",
    "case_id",
    "load_msd_datalist",
    "msd_labels",
    "split_folds",
    "fold_of_cases",
]

DEFAULT_NUM_FOLDS = 5


def case_id(path: str | os.PathLike) -> str:
    """Case id of an image path: its file name without the image suffix (``hippocampus_001``).

    The suffixes are those of :data:`medseg.io.formats.FILE_FORMATS`, the one format table.
    """
    from medseg.io.formats import strip_image_suffix

    return strip_image_suffix(Path(path).name)


def _read_dataset_json(dataset_dir: Path) -> dict:
    dataset_json = dataset_dir / "dataset.json"
    if not dataset_json.is_file():
        raise InputError(
            f"{dataset_dir} has no dataset.json: give the folder of an MSD task "
            "(with dataset.json, imagesTr/ and labelsTr/)"
        )
    try:
        return json.loads(dataset_json.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{dataset_json} is not valid JSON ({exc}); restore the original MSD file") from exc


def load_msd_datalist(dataset_dir: str | os.PathLike, section: str = "training") -> list[dict[str, str]]:
    """Read an MSD ``dataset.json`` into a MONAI datalist with absolute paths, sorted by case id.

    Args:
        dataset_dir: folder holding ``dataset.json`` (MSD layout).
        section: ``"training"`` (image + label dicts) or ``"test"`` (image paths).

    Returns:
        ``[{"image": ..., "label": ..., "case_id": ...}, ...]`` sorted by case id; files that
        the json names but that are missing on disk raise :class:`InputError`.
    """
    root = Path(dataset_dir).resolve()
    meta = _read_dataset_json(root)
    if section not in meta:
        raise InputError(f"{root / 'dataset.json'} has no '{section}' section")
    items = []
    for entry in meta[section]:
        item = {"image": entry} if isinstance(entry, str) else dict(entry)
        for key in ("image", "label"):
            if key in item:
                path = (root / item[key]).resolve()
                if not path.is_file():
                    raise InputError(f"{path} is listed in dataset.json but missing; check the dataset copy")
                item[key] = str(path)
        item["case_id"] = case_id(item["image"])
        items.append(item)
    return sorted(items, key=lambda d: d["case_id"])


def msd_labels(dataset_dir: str | os.PathLike) -> dict[int, str]:
    """Label values and names of an MSD task, e.g. ``{0: "background", 1: "Anterior", 2: "Posterior"}``."""
    meta = _read_dataset_json(Path(dataset_dir))
    return {int(k): str(v) for k, v in meta.get("labels", {}).items()}


def fold_of_cases(case_ids: Sequence[str], num_folds: int = DEFAULT_NUM_FOLDS) -> dict[str, int]:
    """Fold index of each case id under the fixed split (sorted ids, index % num_folds)."""
    return {cid: index % num_folds for index, cid in enumerate(sorted(set(case_ids)))}


def split_folds(
    datalist: Sequence[dict],
    folds: int | Sequence[int],
    num_folds: int = DEFAULT_NUM_FOLDS,
) -> list[dict]:
    """Items of ``datalist`` that belong to ``folds`` under the fixed split.

    Args:
        datalist: MONAI datalist; items carry ``case_id`` or an ``image`` path.
        folds: one fold index or several (e.g. ``[1, 2, 3, 4]`` for training).
        num_folds: number of folds (5 for all of medseg's reported figures).
    """
    wanted = {folds} if isinstance(folds, int) else set(folds)
    bad = [f for f in wanted if not 0 <= f < num_folds]
    if bad:
        raise InputError(f"fold {bad[0]} does not exist: choose 0..{num_folds - 1}")
    ids = [item.get("case_id") or case_id(item["image"]) for item in datalist]
    fold_of = fold_of_cases(ids, num_folds)
    return [item for item, cid in zip(datalist, ids, strict=True) if fold_of[cid] in wanted]


def default_data_dir(subfolder: str = "") -> str:
    """Folder of the project's real data: ``$MEDSEG_DATA_DIR``, else ``../shared/data`` from the cwd.

    From inside a bundle folder (``bundles/<name>``) the parent folders are searched too, so
    ``python -m monai.bundle run`` finds the data from the repository root or the bundle root.
    """
    from medseg.paths import data_dir

    return str(data_dir(subfolder))
