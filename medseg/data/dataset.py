"""Labelled datasets in the MSD and nnU-Net v2 raw layouts: detect, list, read and validate cases.

``medseg plan`` takes any labelled dataset a user brings. The two layouts users have are

* **MSD** (Medical Segmentation Decathlon): ``dataset.json`` with ``modality``, ``labels``
  (``{"0": "background", ...}``) and ``training`` (``[{"image": ..., "label": ...}]``); NIfTI
  images, 3-D, or 4-D with the channels last as MSD stores them.
* **nnU-Net v2 raw**: ``dataset.json`` with ``channel_names``, ``labels``
  (``{"background": 0, ...}``), ``numTraining`` and ``file_ending``; one file per channel,
  ``imagesTr/<case>_<XXXX><ending>``, and ``labelsTr/<case><ending>``. 2-D datasets may be
  photographs, ``.png`` or ``.jpg``/``.jpeg``: a grey image is one channel, an RGB
  ``<case>_0000<ending>`` supplies the three channels named in ``channel_names`` (as nnU-Net's
  Dataset120 does); labels are PNGs of class indices (``labelsTr/<case>.png`` also for JPEG images,
  whose lossy compression would blur class indices).

A dataset that cannot train a model correctly is refused before anything is written, with one
line that names the case and says what to fix (:class:`DatasetError`). :func:`open_dataset` does
the checks that need no voxels (layout, missing files, fewer cases than folds);
:func:`read_case` reads one case and checks it (image and label grids, label values, channel
count, NaN/inf), so the fingerprint, which reads every case anyway, validates the whole dataset
in the same pass.

Arrays are channel-first, ``(C, *spatial)``; 3-D images keep their NIfTI index order and RAS
affine (as :func:`medseg.io.read_image` gives them), 2-D PNGs are ``(C, rows, columns)`` with a
unit-spacing affine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.data.datalist import DEFAULT_NUM_FOLDS
from medseg.errors import DatasetError, InputError, first_line
from medseg.io.formats import PHOTO_SUFFIXES, photo_label_ending, strip_image_suffix

__all__ = [
    "DatasetError",
    "Case",
    "CaseData",
    "DatasetSpec",
    "GRID_TOLERANCE_VOXELS",
    "RGB_CHANNEL_NAMES",
    "detect_layout",
    "load_datalist",
    "open_dataset",
    "read_case",
]

# Image and label affines may differ by this fraction of the smallest voxel size (header rounding).
GRID_TOLERANCE_VOXELS = 0.01
# Channel names that make a 3-channel PNG an RGB photograph (case-insensitive).
RGB_CHANNEL_NAMES = (("r", "g", "b"), ("red", "green", "blue"))


@dataclass(frozen=True)
class Case:
    """One labelled case of a dataset.

    Attributes:
        case_id: the case's name (``hippocampus_001``, ``cju0qkwl35piu0993l0dewei2``).
        images: the image file(s): MSD one (3-D or 4-D), nnU-Net one per channel (an RGB PNG one).
        label: the label file.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path


@dataclass(frozen=True)
class DatasetSpec:
    """What ``dataset.json`` says about a dataset, and its cases sorted by case id.

    Attributes:
        root: the dataset folder.
        layout: ``"msd"`` or ``"nnunet"``.
        name: the dataset's name (``dataset.json`` ``name``, else the folder name).
        labels: label value -> name, background included (``{0: "background", 1: "Anterior"}``).
        channels: channel index -> name or modality (``{0: "MRI"}``, ``{0: "R", 1: "G", 2: "B"}``).
        file_ending: image file ending (``.nii.gz``, ``.png``).
        spatial_dims: 2 or 3.
        cases: the labelled cases, sorted by case id (the order of the fixed fold split).
        meta: the whole ``dataset.json`` (licence, reference, description, ...).
    """

    root: Path
    layout: str
    name: str
    labels: dict[int, str]
    channels: dict[int, str]
    file_ending: str
    spatial_dims: int
    cases: tuple[Case, ...]
    meta: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def is_rgb(self) -> bool:
        """True for 2-D photographs whose three channels are red, green and blue."""
        names = tuple(self.channels[k].strip().lower() for k in sorted(self.channels))
        return names in RGB_CHANNEL_NAMES


@dataclass
class CaseData:
    """One case read and checked: channel-first image, integer label map and their geometry.

    Attributes:
        case_id: the case's name.
        image: ``(C, *spatial)`` float32 voxels.
        label: ``spatial`` integer class indices.
        affine: voxel-to-world affine (RAS for NIfTI; unit spacing for PNG).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        rank = self.affine.shape[0] - 1
        return tuple(float(s) for s in np.sqrt((self.affine[:rank, :rank] ** 2).sum(axis=0)))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.label.shape)


def _read_json(root: Path) -> dict[str, Any]:
    path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; give a dataset folder with dataset.json")
    if not path.is_file():
        raise DatasetError(
            f"{root} has no dataset.json: give an MSD task folder or an nnU-Net v2 raw dataset folder"
        )
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({first_line(exc)}); fix or restore it") from exc
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object")
    return meta


def detect_layout(meta: Mapping[str, Any]) -> str:
    """``"nnunet"`` for an nnU-Net v2 ``dataset.json`` (``channel_names``), ``"msd"`` for an MSD one.

    Raises:
        DatasetError: neither layout's keys are present.
    """
    if "channel_names" in meta and "file_ending" in meta:
        return "nnunet"
    if "modality" in meta and "training" in meta:
        return "msd"
    raise DatasetError(
        "dataset.json is neither MSD (needs 'modality', 'labels', 'training') nor nnU-Net v2 "
        "(needs 'channel_names', 'labels', 'numTraining', 'file_ending'); add the missing keys"
    )


def _int_keyed(mapping: Mapping[str, Any], what: str) -> dict[int, str]:
    try:
        return {int(k): str(v) for k, v in sorted(mapping.items(), key=lambda kv: int(kv[0]))}
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"dataset.json '{what}' keys must be integers, got {list(mapping)}") from exc


def _nnunet_labels(mapping: Mapping[str, Any]) -> dict[int, str]:
    labels: dict[int, str] = {}
    for name, value in mapping.items():
        if isinstance(value, (list, tuple)):
            raise DatasetError(
                f"dataset.json label '{name}' is a region ({value}); medseg plans one class per label "
                "value: list each label value under its own name"
            )
        try:
            labels[int(value)] = str(name)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"dataset.json label '{name}' has value {value!r}; use an integer") from exc
    return dict(sorted(labels.items()))


def _check_labels(labels: dict[int, str], path: Path) -> None:
    if 0 not in labels:
        raise DatasetError(f"{path} declares no label 0 (background); add it to 'labels'")
    if len(labels) < 2:
        raise DatasetError(f"{path} declares no foreground label; add at least one to 'labels'")


def _strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if ending and name.endswith(ending) else name


def _msd_spec(root: Path, meta: dict[str, Any]) -> DatasetSpec:
    labels = _int_keyed(meta.get("labels", {}), "labels")
    channels = _int_keyed(meta.get("modality", {}), "modality")
    cases = []
    for entry in meta.get("training", []):
        if not isinstance(entry, Mapping) or "image" not in entry or "label" not in entry:
            raise DatasetError(f"dataset.json 'training' entry {entry!r} needs 'image' and 'label'")
        image, label = (root / entry["image"]).resolve(), (root / entry["label"]).resolve()
        cases.append(Case(strip_image_suffix(image.name), (image,), label))
    dims = 2 if str(meta.get("tensorImageSize", "3D")).upper().startswith("2") else 3
    return DatasetSpec(
        root=root,
        layout="msd",
        name=str(meta.get("name") or root.name),
        labels=labels,
        channels=channels,
        file_ending=".nii.gz",
        spatial_dims=dims,
        cases=tuple(sorted(cases, key=lambda c: c.case_id)),
        meta=meta,
    )


def _nnunet_spec(root: Path, meta: dict[str, Any]) -> DatasetSpec:
    ending = str(meta["file_ending"])
    labels = _nnunet_labels(meta.get("labels", {}))
    channels = _int_keyed(meta["channel_names"], "channel_names")
    label_dir, image_dir = root / "labelsTr", root / "imagesTr"
    if not label_dir.is_dir() or not image_dir.is_dir():
        raise DatasetError(f"{root} needs imagesTr/ and labelsTr/ folders (nnU-Net v2 raw layout)")
    label_ending = photo_label_ending(ending)
    case_ids = sorted(
        _strip_ending(p.name, label_ending) for p in label_dir.iterdir() if p.name.endswith(label_ending)
    )
    rgb_png = ending.lower() in PHOTO_SUFFIXES and len(channels) == 3
    cases = []
    for cid in case_ids:
        files = [image_dir / f"{cid}_{k:04d}{ending}" for k in sorted(channels)]
        if rgb_png and files[0].is_file() and not files[1].exists():
            files = files[:1]  # one RGB PNG supplies the three channels
        cases.append(Case(cid, tuple(files), label_dir / f"{cid}{label_ending}"))
    declared = meta.get("numTraining")
    if declared is not None and int(declared) != len(cases):
        raise DatasetError(
            f"dataset.json says numTraining {declared} but labelsTr/ holds {len(cases)} '{label_ending}' labels; "
            "add the missing labels or correct numTraining"
        )
    return DatasetSpec(
        root=root,
        layout="nnunet",
        name=str(meta.get("name") or root.name),
        labels=labels,
        channels=channels,
        file_ending=ending,
        spatial_dims=2 if ending.lower() in PHOTO_SUFFIXES else 3,
        cases=tuple(cases),
        meta=meta,
    )


def open_dataset(path: str | os.PathLike, num_folds: int = DEFAULT_NUM_FOLDS) -> DatasetSpec:
    """Read a dataset's ``dataset.json``, list its cases and check what needs no voxels.

    Args:
        path: dataset folder (MSD or nnU-Net v2 raw; detected from ``dataset.json``).
        num_folds: folds of the fixed split; the dataset needs at least one case per fold.

    Raises:
        DatasetError: unknown layout, a file that dataset.json lists is missing, no or too few cases,
            bad label declarations.
    """
    root = Path(path).resolve()
    meta = _read_json(root)
    spec = _nnunet_spec(root, meta) if detect_layout(meta) == "nnunet" else _msd_spec(root, meta)
    _check_labels(spec.labels, root / "dataset.json")
    if not spec.channels:
        raise DatasetError(
            f"{root / 'dataset.json'} declares no image channel; add 'modality' or 'channel_names'"
        )
    seen: set[str] = set()
    for case in spec.cases:
        if case.case_id in seen:
            raise DatasetError(f"case {case.case_id} is listed twice in dataset.json; remove the duplicate")
        seen.add(case.case_id)
        for file in (*case.images, case.label):
            if not file.is_file():
                raise DatasetError(
                    f"case {case.case_id}: {file.relative_to(root) if file.is_relative_to(root) else file} "
                    "is missing; restore the file or remove the case from the dataset"
                )
    if len(spec.cases) < num_folds:
        raise DatasetError(
            f"{root} has {len(spec.cases)} labelled case(s), fewer than the {num_folds} folds of the fixed "
            f"split (fold 0 is the test fold); add cases until there are at least {num_folds}"
        )
    return spec


def load_datalist(path: str | os.PathLike, num_folds: int = DEFAULT_NUM_FOLDS) -> list[dict[str, Any]]:
    """A MONAI datalist of a dataset in either layout, sorted by case id; no voxel is read.

    Generated bundles name it in their configs (``medseg.data.dataset.load_datalist``), so one
    ``train.json`` reads MSD and nnU-Net v2 raw datasets alike; feed it to
    :func:`medseg.data.split_folds` for the fixed split.

    Args:
        path: dataset folder holding ``dataset.json``.
        num_folds: folds of the fixed split (the dataset needs at least one case per fold).

    Returns:
        ``[{"image": path, or one path per channel file, "label": path, "case_id": ...}, ...]``.
    """
    spec = open_dataset(path, num_folds)
    return [
        {
            "image": str(case.images[0]) if len(case.images) == 1 else [str(p) for p in case.images],
            "label": str(case.label),
            "case_id": case.case_id,
        }
        for case in spec.cases
    ]


def _read_png(path: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A photograph (PNG or JPEG) as ``(rows, columns[, channels])`` and a unit-spacing 2-D affine."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr"):
                img = img.convert("RGB" if img.mode != "LA" else "L")
            array = np.asarray(img)
    except OSError as exc:
        raise DatasetError(
            f"case {case_id}: {path.name} cannot be read as a photograph ({first_line(exc)}); "
            "re-export it or remove the case"
        ) from exc
    return array, np.eye(3)


def _read_file(path: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A file's array (spatial first, channels last if any) and its affine; errors name the case."""
    if path.name.lower().endswith(PHOTO_SUFFIXES):
        return _read_png(path, case_id)
    from medseg.io import read_image  # the public name: medseg.io's modules may move

    try:
        array, meta = read_image(path)
    except InputError as exc:
        raise DatasetError(f"case {case_id}: {first_line(exc)}") from exc
    return np.asarray(array), np.asarray(meta["affine"], dtype=np.float64)


def _check_finite(array: np.ndarray, case_id: str, path: Path) -> None:
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        count = int((~np.isfinite(array)).sum())
        raise DatasetError(
            f"case {case_id}: {path.name} has {count} NaN/inf voxel(s); replace them (e.g. by 0) or remove the case"
        )


def _same_grid(a: np.ndarray, b: np.ndarray) -> bool:
    rank = a.shape[0] - 1
    smallest = float(np.sqrt((a[:rank, :rank] ** 2).sum(axis=0)).min())
    return a.shape == b.shape and float(np.abs(a - b).max()) <= GRID_TOLERANCE_VOXELS * smallest


def _image_channels(spec: DatasetSpec, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """The case's image as ``(C, *spatial)`` float32 and its affine; checks channel count and grids."""
    dims = spec.spatial_dims
    parts, affine = [], None
    for path in case.images:
        array, file_affine = _read_file(path, case.case_id)
        _check_finite(array, case.case_id, path)
        if array.ndim == dims:
            array = array[None]
        elif array.ndim == dims + 1:
            array = np.moveaxis(array, -1, 0)  # channels last (MSD 4-D NIfTI, RGB PNG) -> first
        else:
            raise DatasetError(
                f"case {case.case_id}: {path.name} has shape {array.shape}, not a {dims}-D image "
                f"(with optional channels last); fix the file or the dataset's dimensionality"
            )
        if affine is None:
            affine = file_affine
        elif array.shape[1:] != parts[0].shape[1:] or not _same_grid(affine, file_affine):
            raise DatasetError(
                f"case {case.case_id}: channel file {path.name} is not on the grid of {case.images[0].name}; "
                "resample all channels of a case to one grid"
            )
        parts.append(array)
    image = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
    if image.shape[0] != spec.num_channels:
        raise DatasetError(
            f"case {case.case_id} has {image.shape[0]} image channel(s) but dataset.json declares "
            f"{spec.num_channels} ({', '.join(spec.channels.values())}), as the other cases must have; "
            "give every case the same channels"
        )
    assert affine is not None
    return image.astype(np.float32, copy=False), affine


def _check_label_values(label: np.ndarray, spec: DatasetSpec, case: Case) -> np.ndarray:
    if label.dtype.kind == "f":
        _check_finite(label, case.case_id, case.label)
        fractional = label != np.round(label)
        if fractional.any():
            example = float(label[fractional].flat[0])
            raise DatasetError(
                f"case {case.case_id}: label {case.label.name} holds non-integer values (e.g. {example:g}); "
                "labels must be class indices: re-export it with nearest-neighbour interpolation"
            )
    elif label.dtype.kind not in "iub":
        raise DatasetError(f"case {case.case_id}: label {case.label.name} has voxel type {label.dtype}")
    values = np.unique(label).astype(np.int64)
    unknown = sorted(set(values.tolist()) - set(spec.labels))
    if unknown:
        raise DatasetError(
            f"case {case.case_id}: label {case.label.name} holds value(s) {unknown} that dataset.json does not "
            f"declare (labels {sorted(spec.labels)}); declare them in 'labels' or fix the label"
        )
    return label.astype(np.uint8 if values.max(initial=0) < 256 else np.int32, copy=False)


def read_case(spec: DatasetSpec, case: Case) -> CaseData:
    """Read one case and check it can train a model.

    Args:
        spec: the dataset (from :func:`open_dataset`).
        case: one of ``spec.cases``.

    Returns:
        The channel-first float32 image, the integer label map and the affine.

    Raises:
        DatasetError: unreadable file; NaN/inf voxels; wrong number of channels; image and label
            grids differ (shape, or affine by more than :data:`GRID_TOLERANCE_VOXELS` voxel);
            non-integer label values or values ``labels`` does not declare.
    """
    image, affine = _image_channels(spec, case)
    label, label_affine = _read_file(case.label, case.case_id)
    if label.ndim == spec.spatial_dims + 1 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != spec.spatial_dims:
        raise DatasetError(
            f"case {case.case_id}: label {case.label.name} has shape {label.shape}; labels must be one "
            f"{spec.spatial_dims}-D map of class indices (a grey PNG for 2-D)"
        )
    if label.shape != image.shape[1:]:
        raise DatasetError(
            f"case {case.case_id}: image shape {tuple(image.shape[1:])} and label shape {tuple(label.shape)} "
            "differ; the label must be drawn on the image's grid (resample it with nearest neighbour)"
        )
    if not _same_grid(affine, label_affine):
        raise DatasetError(
            f"case {case.case_id}: image and label affines differ by more than {GRID_TOLERANCE_VOXELS} voxel "
            "(origin, spacing or direction); give the label the image's header geometry"
        )
    return CaseData(case.case_id, image, _check_label_values(label, spec, case), affine)
