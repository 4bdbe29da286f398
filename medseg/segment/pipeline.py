"""Segment one image with a MONAI bundle and write the segmentation, DICOM SEG, overlay and report.

The bundle decides *how* the image is prepared and the network run: its ``configs/inference.json``
is parsed with :class:`monai.bundle.ConfigParser` (``bundle_root`` set to the bundle folder) and
its ``network_def``, ``preprocessing`` and ``inferer`` are used as they are, with
``models/model.pt`` loaded into the network. medseg only overrides run-time settings:

* the inferer's ``overlap``, ``sw_batch_size``, ``sw_device`` (where windows run) and ``device``
  (where the stitched output lives: always the CPU, so large outputs never fill the GPU);
* the resampling precision of ``Spacingd`` entries that do not set ``dtype``: float32 instead of
  MONAI's float64 default (halves the memory of the biggest step, no visible difference);
* a :class:`medseg.io.MedsegReader` is registered first in the bundle's ``LoadImaged`` so every
  input goes through the strict DICOM/NIfTI/NRRD loader, with the chosen ``series_uid``.

After the network, the class is chosen (argmax) on the network grid and mapped back to the
input's own grid by nearest-neighbour look-up through the affines MONAI tracked through the
preprocessing (input voxel -> world -> network voxel): this inverts Orientation, Spacing,
cropping and padding exactly like ``Invertd(nearest_interp=True)``, without a full-resolution
copy of the class probabilities. With ``tta``, softmax probabilities are averaged over flips
(the bundle's ``tta_flip_axes``) before the argmax.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__, background
from medseg.bundle.core import Bundle, open_bundle
from medseg.errors import BundleError, ConfigError, cause_chain, first_line
from medseg.io.atomic import atomic_write_json
from medseg.io.geometry import resample_labels_nearest
from medseg.networks.base import ChannelsLast
from medseg.segment.concepts import SegmentSpec, segment_specs
from medseg.segment.dicom_seg import write_seg
from medseg.segment.suitability import Suitability, check_suitability, image_geometry

__all__ = [
    "OUTPUT_FILES",
    "SegmentResult",
    "Segmenter",
    "tta_flip_axes",
]

logger = logging.getLogger(__name__)

OUTPUT_FILES = {
    "segmentation": "segmentation.nii.gz",
    "seg": "segmentation.dcm",
    "overlay": "overlay.png",
    "report": "report.json",
}
_LOADERS = ("LoadImaged", "LoadImage")


@dataclass
class SegmentResult:
    """What one run wrote.

    Attributes:
        output_dir: the folder holding the outputs.
        files: output kind -> path (``segmentation``, ``seg`` for DICOM input, ``overlay``, ``report``).
        report: the report written as ``report.json``.
    """

    output_dir: Path
    files: dict[str, Path]
    report: dict[str, Any] = field(repr=False)

    @property
    def volumes_ml(self) -> dict[str, float]:
        return {item["name"]: item["volume_ml"] for item in self.report["labels"]}


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


class _Timer:
    """Wall time of each stage, and the process' peak resident memory at the end of each."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float | None] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 4)
            self.peak_rss_mb[name] = _peak_rss_mb()


def tta_flip_axes(input_format: Mapping[str, Any]) -> list[int]:
    """Spatial axes (of the network grid) along which flip TTA is valid, from ``tta_flip_axes``.

    Flipping along an axis the network was not trained to be invariant to (e.g. anterior-posterior
    for labels named anterior and posterior) would corrupt the result, so bundles should declare
    it; without the key all three axes are flipped (nnU-Net's default) and a warning is logged.
    """
    declared = input_format.get("tta_flip_axes")
    if declared is None:
        logger.warning(
            "the bundle declares no tta_flip_axes in network_data_format.inputs.image: flipping all axes"
        )
        return [0, 1, 2]
    if not isinstance(declared, Sequence) or not all(isinstance(a, int) and 0 <= a <= 2 for a in declared):
        raise BundleError(f"tta_flip_axes must be a list of spatial axes 0-2, got {declared!r}")
    return sorted(set(declared))


def _target_name(item: Any) -> str:
    if isinstance(item, Mapping):
        return str(item.get("_target_", "")).rsplit(".", 1)[-1]
    return ""


def _apply(transforms: Sequence[Any], data: Any) -> Any:
    """Apply transforms; a medseg error inside one is raised as is, any other as a one-line BundleError.

    ``data`` may be a one-item list holding the data: it is emptied, so that no reference outside
    keeps the input alive while the transforms make their copies.
    """
    from monai.transforms import apply_transform

    from medseg.errors import MedsegError

    if isinstance(data, list):
        data = data.pop()
    for transform in transforms:
        try:
            data = apply_transform(transform, data)
        except Exception as exc:  # MONAI wraps every failure in RuntimeError("applying transform ...")
            chain = list(cause_chain(exc, context=False))
            for cause in chain:
                if isinstance(cause, MedsegError):
                    raise cause from None
            root = chain[-1]
            raise BundleError(
                f"the bundle's preprocessing failed in {type(transform).__name__}: "
                f"{type(root).__name__}: {first_line(root)}"
            ) from exc
    return data


def _label_counts(labelmap: np.ndarray, n_labels: int, chunk: int = 1 << 22) -> np.ndarray:
    """Voxels per label value, in chunks (``np.bincount`` of the whole volume would make an int64 copy)."""
    flat = labelmap.reshape(-1)
    counts = np.zeros(max(n_labels, int(labelmap.max(initial=0)) + 1), dtype=np.int64)
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start : start + chunk], minlength=len(counts))
    return counts


def _compact_copy(array: np.ndarray) -> np.ndarray:
    """A copy of the image for display: int16 when the values are integers in its range (CT, most MR)."""
    if array.size and array.dtype.kind in "fiu":
        lo, hi = float(array.min()), float(array.max())  # NaN propagates and fails the test below
        if -32768 <= lo and hi <= 32767:
            compact = array.astype(np.int16)
            if array.dtype.kind in "iu" or np.array_equal(compact, array):
                return compact
    return np.array(array, dtype=np.float32, copy=True)


def _atomic_json(path: Path, payload: Any) -> None:
    atomic_write_json(path, payload, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class Segmenter:
    """A bundle's network, preprocessing and inferer, ready to segment inputs one after another.

    Args:
        bundle: bundle folder (or :class:`Bundle`).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: where the network runs.
        tta: average the softmax over flips (the bundle's ``tta_flip_axes``).
        overlap: sliding-window overlap (0 <= overlap < 1); None keeps the bundle's.
        sw_batch_size: windows per forward pass; None keeps the bundle's.
        config: the bundle config to read (``inference``).
        parallel_outputs: write the DICOM SEG in a forked child process while this one writes
            the NIfTI, overlay and report (Linux only; elsewhere they are written one by one).

    Raises:
        BundleError: the bundle's config, network or weights cannot be used;
        ConfigError: invalid device or overlap.
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        device: str = "cpu",
        tta: bool = False,
        overlap: float | None = None,
        sw_batch_size: int | None = None,
        config: str = "inference",
        parallel_outputs: bool = True,
    ) -> None:
        import torch
        from monai.bundle import ConfigParser

        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        if overlap is not None and not (0.0 <= overlap < 1.0):
            raise ConfigError(f"--overlap must be in [0, 1), got {overlap}")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"invalid --device {device!r}: use cpu or cuda") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available; use --device cpu")
        if self.device.type not in ("cpu", "cuda"):
            raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
        self.tta = tta
        self.parallel_outputs = parallel_outputs
        self.input_format: Mapping[str, Any] = (
            self.bundle.metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
        )
        self.input_key = next(
            iter(self.bundle.metadata.get("network_data_format", {}).get("inputs", {"image": None})), "image"
        )

        parser = ConfigParser()
        try:
            parser.read_config(str(self.bundle.config(config)))
            parser.read_meta(str(self.bundle.config("metadata")))
        except BundleError:
            raise
        except Exception as exc:  # malformed JSON/YAML
            raise BundleError(f"cannot read the bundle config {config}: {exc}") from exc
        parser["bundle_root"] = str(self.bundle.root)
        parser["device"] = f"$torch.device('{self.device}')"
        for key in ("network_def", "preprocessing", "inferer"):
            if key not in parser:
                raise BundleError(f"the bundle's {config} config has no '{key}'")
        self._float32_spacing(parser)
        self._refuse_multilabel(parser)
        try:
            network = parser.get_parsed_content("network_def", instantiate=True)
            self.preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
            self.inferer = parser.get_parsed_content("inferer", instantiate=True)
        except Exception as exc:  # any failure to build the bundle's objects
            raise BundleError(f"cannot build the bundle's network, preprocessing or inferer: {exc}") from exc
        self.network = self._load_weights(network)
        self._configure_inferer(overlap, sw_batch_size)
        self.labels = self.bundle.labels
        self.specs: list[SegmentSpec] = segment_specs(self.labels, self.bundle.metadata)
        self.flip_axes = tta_flip_axes(self.input_format) if tta else []
        declared = parser.get("network_def", {})
        dims = (
            declared.get("spatial_dims", declared.get("dimensions"))
            if isinstance(declared, Mapping)
            else None
        )
        network_dims = int(dims) if isinstance(dims, int) else int(getattr(network, "spatial_dims", 3) or 3)
        # a SliceInferer runs a 2-D network over the slices of a volume: the input is one dimension more
        self.spatial_dims = (
            network_dims + 1 if type(self.inferer).__name__ == "SliceInferer" else network_dims
        )

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _float32_spacing(parser: Any) -> None:
        transforms = parser.get("preprocessing", {})
        items = transforms.get("transforms", []) if isinstance(transforms, Mapping) else []
        for index, item in enumerate(items if isinstance(items, list) else []):
            if _target_name(item) in ("Spacingd", "Spacing") and "dtype" not in item:
                parser[f"preprocessing#transforms#{index}#dtype"] = "$torch.float32"

    @staticmethod
    def _refuse_multilabel(parser: Any) -> None:
        text = json.dumps(parser.get("postprocessing", {}))
        if '"sigmoid": true' in text:
            raise BundleError(
                "the bundle's postprocessing uses a sigmoid (multi-label output); medseg segment "
                "supports mutually exclusive labels (softmax/argmax) only"
            )

    def _load_weights(self, network: Any) -> Any:
        import torch

        path = self.bundle.weights
        if not path.is_file():
            raise BundleError(
                f"bundle {self.bundle.name} has no weights at {path}; train or download them first"
            )
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated or foreign file
            raise BundleError(f"cannot load the weights {path}: {exc}") from exc
        for key in ("model", "state_dict", "network"):
            if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
                state = state[key]
        if not isinstance(state, Mapping):
            raise BundleError(f"{path} holds no state dict")
        try:
            network.load_state_dict(state)
        except RuntimeError as exc:
            raise BundleError(
                f"the weights {path} do not fit the bundle's network_def ({first_line(exc)})"
            ) from exc
        network = network.to(self.device).eval()
        return ChannelsLast(network) if self.device.type == "cpu" else network

    def _configure_inferer(self, overlap: float | None, sw_batch_size: int | None) -> None:
        import torch

        inferer = self.inferer
        if overlap is not None:
            if not hasattr(inferer, "overlap"):
                raise ConfigError(f"--overlap: the bundle's inferer {type(inferer).__name__} has no overlap")
            inferer.overlap = float(overlap)
        if sw_batch_size is not None and hasattr(inferer, "sw_batch_size"):
            inferer.sw_batch_size = int(sw_batch_size)
        if hasattr(inferer, "sw_device"):
            inferer.sw_device = self.device
        if hasattr(inferer, "device"):
            inferer.device = torch.device("cpu")
        if hasattr(inferer, "progress"):
            inferer.progress = False

    def settings(self) -> dict[str, Any]:
        inferer = self.inferer
        return {
            "device": str(self.device),
            "amp": self.device.type == "cuda",
            "tta": self.tta,
            "tta_flip_axes": self.flip_axes,
            "inferer": type(inferer).__name__,
            "roi_size": [int(v) for v in getattr(inferer, "roi_size", [])] or None,
            "overlap": getattr(inferer, "overlap", None),
            "sw_batch_size": getattr(inferer, "sw_batch_size", None),
            "blend_mode": str(getattr(getattr(inferer, "mode", None), "value", getattr(inferer, "mode", "")))
            or None,
        }

    # ------------------------------------------------------------------ steps
    def _transforms(self) -> list[Any]:
        transforms = getattr(self.preprocessing, "transforms", None)
        if transforms is None:
            transforms = (
                self.preprocessing if isinstance(self.preprocessing, (list, tuple)) else [self.preprocessing]
            )
        return list(transforms)

    def load(
        self, path: str | os.PathLike, series_uid: str | None = None
    ) -> tuple[dict[str, Any], list[Any]]:
        """Run the bundle's preprocessing up to its loader; returns the data and the remaining transforms.

        The loader is called with a :class:`medseg.io.MedsegReader` as its *runtime* reader: MONAI's
        ``LoadImage`` otherwise falls back to its other readers (ITK, NiBabel, PIL ...) when the named
        reader refuses a file, which would silently load a DICOM series with a missing slice.
        """
        from medseg.io import MedsegReader, load_image

        transforms = self._transforms()
        index = next((i for i, t in enumerate(transforms) if type(t).__name__ in _LOADERS), None)
        if index is None:  # the bundle expects an already loaded image
            return {self.input_key: load_image(path, series_uid=series_uid)}, transforms
        data: Any = {self.input_key: str(path)}
        data = _apply(transforms[:index], data)
        loader, reader = transforms[index], MedsegReader(series_uid=series_uid)
        if type(loader).__name__ == "LoadImaged":
            data = loader(data, reader)
        else:
            data[self.input_key] = loader(data[self.input_key], reader)
        return data, transforms[index + 1 :]

    def predict(self, image: Any) -> np.ndarray:
        """Class label per voxel of the preprocessed (C, X, Y, Z) image, on its grid."""
        import torch

        from medseg.transforms import argmax_channels

        x = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)[None].float()
        autocast = (
            torch.autocast(device_type="cuda", dtype=torch.float16)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            if not self.flip_axes:
                out = self.inferer(x, self.network)
                labels = argmax_channels(self._check_channels(out)[0])
            else:
                total = None
                combos = [
                    c
                    for n in range(len(self.flip_axes) + 1)
                    for c in itertools.combinations(self.flip_axes, n)
                ]
                for combo in combos:
                    dims = [a + 2 for a in combo]
                    xi = torch.flip(x, dims) if dims else x
                    prob = torch.softmax(self._check_channels(self.inferer(xi, self.network)).float(), dim=1)
                    prob = torch.flip(prob, dims) if dims else prob
                    total = prob if total is None else total.add_(prob)
                    del prob
                assert total is not None
                labels = argmax_channels(self._check_channels(total)[0])
        return labels.cpu().numpy()

    def _check_channels(self, out: Any) -> Any:
        if out.shape[1] != len(self.labels):
            raise BundleError(
                f"the network outputs {out.shape[1]} channels but the bundle's metadata names "
                f"{len(self.labels)} labels (network_data_format.outputs.pred.channel_def)"
            )
        return out

    # ------------------------------------------------------------------ run
    def run(
        self,
        path: str | os.PathLike,
        output_dir: str | os.PathLike,
        series_uid: str | None = None,
        force: bool = False,
    ) -> SegmentResult:
        """Segment one input and write the outputs into ``output_dir`` (created when missing).

        Every output is first written into a hidden staging folder inside ``output_dir`` and moved
        into place only when all of them are complete, so a failed or interrupted run leaves no
        partial file.

        Raises:
            MedsegError subclasses: unreadable input, unsuitable input (unless ``force``), bundle problems.
        """
        from monai.data import MetaTensor

        from medseg.io import save_nifti

        timer = _Timer()
        start = time.perf_counter()
        out_dir = Path(output_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"output {out_dir} exists and is not a folder")

        with timer.stage("load"):
            data, rest = self.load(path, series_uid)
        image = data[self.input_key]
        with timer.stage("check"):
            suitability = check_suitability(image, self.input_format, self.spatial_dims, force=force)
        if suitability.forced:
            logger.warning(
                "input does not fit the bundle (%s); segmenting anyway (--force)", suitability.message()
            )
        original_affine = np.asarray(image.affine, dtype=np.float64)
        geometry = image_geometry(image)
        meta = dict(image.meta)

        with timer.stage("preprocess"):
            # a compact copy for the overlay; the loaded image itself goes into the bundle's transforms
            # (which may work in place) and is freed as soon as they have made their own copies
            display = _compact_copy(self._display_volume(image))
            del image
            holder = [data]  # handed over, so that each input is freed as soon as a transform replaced it
            del data
            data = _apply(rest, holder)
            prepared = data[self.input_key]
            del data
        if not isinstance(prepared, MetaTensor):
            raise BundleError(
                "the bundle's preprocessing drops the image's affine (no MetaTensor); cannot map back"
            )
        net_affine = np.asarray(prepared.affine, dtype=np.float64)
        net_shape = [int(s) for s in prepared.shape[1:]]
        with timer.stage("inference"):
            net_labels = self.predict(prepared)
            del prepared
        with timer.stage("invert"):
            labelmap = resample_labels_nearest(net_labels, net_affine, original_affine, geometry["shape"])
            del net_labels

        voxel_ml = abs(float(np.linalg.det(original_affine[:3, :3]))) / 1000.0
        counts = _label_counts(labelmap, len(self.labels))
        label_rows = [
            {
                "value": spec.value,
                "name": spec.label,
                "segment_number": spec.number,
                "voxels": int(counts[spec.value]),
                "volume_ml": round(float(counts[spec.value]) * voxel_ml, 4),
                "category": spec.category.as_list(),
                "type": spec.type.as_list(),
                "modifiers": [m.as_list() for m in spec.modifiers],
                "codes_from": spec.source,
                "color": list(spec.color),
            }
            for spec in self.specs
        ]
        is_dicom = bool(meta.get("sop_instance_uids"))
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = out_dir / f".medseg-segment-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        seg_job = None
        try:
            files: dict[str, Path] = {}
            seg_uids: dict[str, str] = {}
            if is_dicom:
                # the SEG is written by a forked child while this process writes the other outputs
                seg_job = background.start(
                    write_seg,
                    labelmap,
                    meta,
                    self.specs,
                    staging / OUTPUT_FILES["seg"],
                    fork=self.parallel_outputs,
                    algorithm_name=self.bundle.name,
                    algorithm_version=self.bundle.version,
                    software_versions=f"medseg {__version__}",
                )
            with timer.stage("write_nifti"):
                files["segmentation"] = save_nifti(
                    MetaTensor(labelmap, affine=original_affine), staging / OUTPUT_FILES["segmentation"]
                )
            with timer.stage("overlay"):
                from medseg.segment.overlay import render_overlay

                files["overlay"] = render_overlay(
                    display,
                    labelmap,
                    original_affine,
                    {s.value: s.label for s in self.specs},
                    {s.value: s.color for s in self.specs},
                    staging / OUTPUT_FILES["overlay"],
                    title=f"{self.bundle.name} {self.bundle.version}"
                    + (f" | {meta.get('series_description')}" if meta.get("series_description") else ""),
                    volumes_ml={row["value"]: row["volume_ml"] for row in label_rows},
                )
            if seg_job is not None:
                with timer.stage("wait_seg"):
                    job, seg_job = seg_job, None
                    seg_uids = job.result()
                files["seg"] = staging / OUTPUT_FILES["seg"]
                # the child's own time; "wait_seg" is what the parent still waited for it
                timer.timings["write_seg"] = round(job.seconds, 4)
            timer.timings["total"] = round(time.perf_counter() - start, 4)
            report = self._report(
                meta, geometry, original_affine, net_shape, suitability, label_rows, timer, seg_uids
            )
            files["report"] = staging / OUTPUT_FILES["report"]
            _atomic_json(files["report"], report)
            final = {}
            for kind, staged in files.items():
                target = out_dir / staged.name
                os.replace(staged, target)
                final[kind] = target
        finally:
            if seg_job is not None:  # failed before the SEG was collected
                seg_job.cancel()
            shutil.rmtree(staging, ignore_errors=True)
        return SegmentResult(output_dir=out_dir, files=final, report=report)

    @staticmethod
    def _display_volume(image: Any) -> np.ndarray:
        """The first channel of the loaded image as (I, J, K) for the overlay (a view where possible)."""
        array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
        if array.ndim == 4:
            channel_dim = image.meta.get("original_channel_dim", -1)
            axis = (
                -1
                if not isinstance(channel_dim, (int, float)) or math.isnan(channel_dim)
                else int(channel_dim)
            )
            array = np.take(array, 0, axis=axis)
        return array

    def _report(
        self,
        meta: Mapping[str, Any],
        geometry: Mapping[str, Any],
        affine: np.ndarray,
        net_shape: list[int],
        suitability: Suitability,
        label_rows: list[dict[str, Any]],
        timer: _Timer,
        seg_uids: Mapping[str, str],
    ) -> dict[str, Any]:
        from nibabel.orientations import aff2axcodes

        is_dicom = bool(meta.get("sop_instance_uids"))
        filename = str(meta.get("filename_or_obj", ""))
        return {
            "notice": f"Research use only, not for diagnosis. Automatic segmentation by medseg {__version__}.",
            "medseg_version": __version__,
            "bundle": {
                "name": self.bundle.name,
                "version": self.bundle.version,
                "task": self.bundle.metadata.get("task", ""),
            },
            "input": {
                "format": "dicom"
                if is_dicom
                else ("nrrd" if filename.lower().endswith((".nrrd", ".nhdr")) else "nifti"),
                "series_uid": meta.get("series_uid"),
                "series_description": meta.get("series_description"),
                "study_uid": meta.get("study_uid"),
                "frame_of_reference_uid": meta.get("frame_of_reference_uid"),
                "modality": meta.get("modality"),
                "slices": len(meta["sop_instance_uids"]) if is_dicom else None,
                "shape": geometry["shape"],
                "spacing_mm": geometry["spacing_mm"],
                "orientation": "".join(c or "?" for c in aff2axcodes(affine)),
                "affine_ras": np.round(affine, 6).tolist(),
            },
            "suitability": suitability.to_dict(),
            "settings": {**self.settings(), "network_grid_shape": net_shape},
            "labels": label_rows,
            "total_volume_ml": round(sum(r["volume_ml"] for r in label_rows), 4),
            "outputs": {
                "segmentation": OUTPUT_FILES["segmentation"],
                "seg": OUTPUT_FILES["seg"] if is_dicom else None,
                "overlay": OUTPUT_FILES["overlay"],
                "seg_series_uid": seg_uids.get("series_instance_uid"),
                "seg_sop_instance_uid": seg_uids.get("sop_instance_uid"),
            },
            "timings_s": dict(timer.timings),
            "peak_rss_mb_after": dict(timer.peak_rss_mb),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
