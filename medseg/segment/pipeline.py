"""Segment one image with a MONAI bundle: from the input file to a label map on the input's grid.

:class:`Segmenter` predicts; :mod:`medseg.segment.outputs` writes the segmentation, DICOM SEG,
overlay and report (``Segmenter.run`` does both).

The bundle decides *how* the image is prepared and the network run: its ``configs/inference.json``
is parsed once by :func:`medseg.bundle.loader.load_inference` (``bundle_root`` set to the bundle
folder) and its ``network_def``, ``preprocessing`` and ``inferer`` are used as they are, with
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
(the bundle's ``tta_flip_axes``) before the argmax. Bundles whose postprocessing applies a
sigmoid (multi-label output) are refused.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.bundle.core import Bundle, open_bundle
from medseg.bundle.loader import load_inference
from medseg.errors import BundleError, ConfigError, MedsegError, cause_chain, first_line
from medseg.io.geometry import resample_labels_nearest
from medseg.io.seg_concepts import SegmentSpec, segment_specs
from medseg.networks.base import ChannelsLast
from medseg.precision import resolve_precision, with_precision
from medseg.segment.outputs import (
    OUTPUT_FILES,
    Prediction,
    SegmentResult,
    StageTimer,
    write_outputs,
)
from medseg.segment.suitability import check_suitability, image_geometry

__all__ = [
    "OUTPUT_FILES",
    "SegmentResult",
    "Segmenter",
    "tta_flip_axes",
]

logger = logging.getLogger(__name__)

_SPACING = ("Spacingd", "Spacing")
_ACTIVATIONS = ("Activationsd", "Activations")


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


def _uses_sigmoid(parser: Any, key: str = "postprocessing") -> bool:
    """Whether the parsed config under ``key`` has an ``Activations(d)`` with ``sigmoid`` set.

    The ``sigmoid`` value is resolved by the parser, so ``"$True"`` or a reference counts too.
    """
    item = parser.get(key)
    if isinstance(item, Mapping):
        if _target_name(item) in _ACTIVATIONS and "sigmoid" in item:
            value = parser.get_parsed_content(f"{key}#sigmoid", instantiate=False)
            values = value if isinstance(value, (list, tuple)) else [value]
            if any(bool(v) for v in values):
                return True
        children: Any = [k for k in item if not str(k).startswith("_")]
    elif isinstance(item, list):
        children = range(len(item))
    else:
        return False
    return any(_uses_sigmoid(parser, f"{key}#{child}") for child in children)


class _Components:
    """The bundle's learned connected-component step (``LargestComponentsd`` in its postprocessing),
    applied to the label map on the input's grid, as ``inference.json`` applies it after ``Invertd``."""

    def __init__(self, foreground: bool, classes: Sequence[int]) -> None:
        self.foreground = bool(foreground)
        self.classes = [int(c) for c in classes]

    def __call__(self, labelmap: np.ndarray) -> np.ndarray:
        from medseg.postprocess import largest_components

        return largest_components(labelmap, self.foreground, self.classes)

    def describe(self) -> str:
        parts = ["largest component of all foreground"] if self.foreground else []
        parts += [f"largest component of label {c}" for c in self.classes]
        return "; ".join(parts)


def _learned_postprocessing(config: Any) -> _Components | None:
    """The ``medseg.postprocess.LargestComponentsd`` entry of a parsed postprocessing config, if any."""
    items = config.get("transforms", []) if isinstance(config, Mapping) else []
    for item in items if isinstance(items, list) else []:
        if _target_name(item) == "LargestComponentsd":
            return _Components(item.get("foreground", False), item.get("classes", []))
    return None


def _apply(transforms: Sequence[Any], data: Any) -> Any:
    """Apply transforms; a medseg error inside one is raised as is, any other as a one-line BundleError.

    ``data`` may be a one-item list holding the data: it is emptied, so that no reference outside
    keeps the input alive while the transforms make their copies.
    """
    from monai.transforms import apply_transform

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


def _compact_copy(array: np.ndarray) -> np.ndarray:
    """A copy of the image for display: int16 when the values are integers in its range (CT, most MR)."""
    if array.size and array.dtype.kind in "fiu":
        lo, hi = float(array.min()), float(array.max())  # NaN propagates and fails the test below
        if -32768 <= lo and hi <= 32767:
            compact = array.astype(np.int16)
            if array.dtype.kind in "iu" or np.array_equal(compact, array):
                return compact
    return np.array(array, dtype=np.float32, copy=True)


class Segmenter:
    """A bundle's network, preprocessing and inferer, ready to segment inputs one after another.

    Prediction lives here (:meth:`load`, :meth:`predict`, :meth:`predict_input`); writing the
    files is :func:`medseg.segment.outputs.write_outputs`'s job.

    Args:
        bundle: bundle folder (or :class:`Bundle`).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``: where the network runs.
        tta: average the softmax over flips (the bundle's ``tta_flip_axes``).
        overlap: sliding-window overlap (0 <= overlap < 1); None keeps the bundle's.
        sw_batch_size: windows per forward pass; None keeps the bundle's.
        config: the bundle config to read (``inference``).
        parallel_outputs: write the DICOM SEG in a forked child process while this one writes
            the NIfTI, overlay and report (Linux only; elsewhere they are written one by one).
        fast: an ensemble bundle (:class:`medseg.ensemble.EnsembleNetwork`) runs its first member only.
        low_memory: for very large series: the sliding window runs slab by slab and keeps only the
            labels (:func:`medseg.segment.slabs.slab_argmax`, same result), and the SEG is written
            in this process (no forked writer).
        rtstruct: also write the RT structure set ``rtstruct.dcm`` for DICOM input.
        precision: ``auto``, ``fp32`` or ``bf16`` (:func:`medseg.precision.resolve_precision`; None:
            ``$MEDSEG_PRECISION``, else ``auto``). Only the network's forward runs in it: stitching,
            the TTA average and the argmax stay fp32.

    Raises:
        BundleError: the bundle's config, network or weights cannot be used;
        ConfigError: invalid device, overlap or sw_batch_size (``param`` names which).
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
        fast: bool = False,
        low_memory: bool = False,
        rtstruct: bool = True,
        precision: str | None = None,
    ) -> None:
        from monai.inferers import SliceInferer

        self.bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
        if overlap is not None and not (0.0 <= overlap < 1.0):
            raise ConfigError(f"overlap must be in [0, 1), got {overlap}", param="overlap")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise ConfigError(f"sw_batch_size must be >= 1, got {sw_batch_size}", param="sw_batch_size")
        self.device = self._check_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.tta = tta
        self.parallel_outputs = parallel_outputs and not low_memory
        self.low_memory = low_memory
        self.fast = fast
        self.rtstruct = rtstruct
        self.input_format: Mapping[str, Any] = self.bundle.input_format
        self.input_key = self.bundle.input_key

        inference = load_inference(self.bundle, self.device, config, adjust=self._adjust_config)
        self.preprocessing = inference.preprocessing
        self.inferer = inference.inferer
        network = inference.network
        self.members: list[str] = list(getattr(network, "names", []))
        self.components = _learned_postprocessing(inference.postprocessing)
        self.model = network  # unwrapped (an ensemble's members and their windows are in it)
        self.network = with_precision(
            ChannelsLast(network) if self.device.type == "cpu" else network, self.precision
        )
        self._configure_inferer(overlap, sw_batch_size)
        self.labels = self.bundle.labels
        self.specs: list[SegmentSpec] = segment_specs(self.labels, self.bundle.metadata)
        self.flip_axes = tta_flip_axes(self.input_format) if tta else []
        # a SliceInferer runs a 2-D network over the slices of a volume: the input is one dimension more
        slices = isinstance(self.inferer, SliceInferer)
        self.spatial_dims = inference.spatial_dims + 1 if slices else inference.spatial_dims

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _check_device(device: str) -> Any:
        import torch

        try:
            parsed = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"invalid device {device!r}: use cpu or cuda", param="device") from exc
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no CUDA device is available; use cpu", param="device")
        if parsed.type not in ("cpu", "cuda"):
            raise ConfigError(f"device must be cpu or cuda, got {device!r}", param="device")
        return parsed

    def _adjust_config(self, parser: Any) -> None:
        """Refuse multi-label bundles; resample in float32 (before anything is built)."""
        if _uses_sigmoid(parser):
            raise BundleError(
                "the bundle's postprocessing uses a sigmoid (multi-label output); medseg segment "
                "supports mutually exclusive labels (softmax/argmax) only"
            )
        self._float32_spacing(parser)
        if self.fast:
            if _target_name(parser.get("network_def")) != "EnsembleNetwork":
                raise ConfigError(
                    "fast: the bundle is not an ensemble (its network_def is one network)", param="fast"
                )
            parser["network_def#fast"] = True

    @staticmethod
    def _float32_spacing(parser: Any) -> None:
        transforms = parser.get("preprocessing", {})
        items = transforms.get("transforms", []) if isinstance(transforms, Mapping) else []
        for index, item in enumerate(items if isinstance(items, list) else []):
            if _target_name(item) in _SPACING and "dtype" not in item:
                parser[f"preprocessing#transforms#{index}#dtype"] = "$torch.float32"

    def _configure_inferer(self, overlap: float | None, sw_batch_size: int | None) -> None:
        import torch

        inferer = self.inferer
        # an ensemble's members keep their own windows inside the network: the settings apply there
        windows = [inferer] + [
            group.inferer for group in getattr(self.model, "groups", []) if group.inferer is not None
        ]
        if overlap is not None:
            if not any(hasattr(w, "overlap") for w in windows):
                raise ConfigError(
                    f"overlap: the bundle's inferer {type(inferer).__name__} has no overlap setting",
                    param="overlap",
                )
            for window in windows:
                if hasattr(window, "overlap"):
                    window.overlap = float(overlap)
        if sw_batch_size is not None:
            for window in windows:
                if hasattr(window, "sw_batch_size"):
                    window.sw_batch_size = int(sw_batch_size)
        if hasattr(inferer, "sw_device"):
            inferer.sw_device = self.device
        if hasattr(inferer, "device"):
            inferer.device = torch.device("cpu")
        if hasattr(inferer, "progress"):
            inferer.progress = False

    def settings(self) -> dict[str, Any]:
        inferer = self.inferer
        if not hasattr(inferer, "roi_size"):  # an ensemble: report its first member's window
            inner = [g.inferer for g in getattr(self.model, "groups", []) if g.inferer is not None]
            inferer = inner[0] if inner else inferer
        return {
            "device": str(self.device),
            "precision": self.precision.as_dict(),
            "tta": self.tta,
            "low_memory": self.low_memory,
            "tta_flip_axes": self.flip_axes,
            "members": self.members or None,
            "postprocessing": self.components.describe() if self.components else None,
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
        from monai.transforms import LoadImage, LoadImaged

        from medseg.io import MedsegReader, load_image

        transforms = self._transforms()
        index = next((i for i, t in enumerate(transforms) if isinstance(t, (LoadImage, LoadImaged))), None)
        if index is None:  # the bundle expects an already loaded image
            return {self.input_key: load_image(path, series_uid=series_uid)}, transforms
        data: Any = {self.input_key: str(path)}
        data = _apply(transforms[:index], data)
        loader, reader = transforms[index], MedsegReader(series_uid=series_uid)
        if isinstance(loader, LoadImaged):
            data = loader(data, reader)
        else:
            data[self.input_key] = loader(data[self.input_key], reader)
        return data, transforms[index + 1 :]

    def predict(self, image: Any) -> np.ndarray:
        """Class label per voxel of the preprocessed (C, X, Y, Z) image, on its grid."""
        import torch

        from medseg.postprocess import argmax_channels

        x = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image)[None].float()
        # the network autocasts itself (self.precision) and returns fp32: the rest runs in fp32
        with torch.inference_mode():
            slabs = self._slab_labels(x) if self.low_memory and not self.flip_axes else None
            if slabs is not None:
                labels = slabs
            elif not self.flip_axes:
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

    def _slab_labels(self, x: Any) -> Any:
        """Labels from :func:`medseg.segment.slabs.slab_argmax`; None when the volume is one slab or
        the bundle's inferer is no ``SlidingWindowInferer``."""
        from monai.inferers import SlidingWindowInferer

        from medseg.postprocess import argmax_channels
        from medseg.segment.slabs import slab_argmax

        if not isinstance(self.inferer, SlidingWindowInferer):
            return None
        return slab_argmax(
            x, self.network, self.inferer, lambda scores: argmax_channels(self._check_channels(scores[None])[0])
        )

    def _check_channels(self, out: Any) -> Any:
        if out.shape[1] != len(self.labels):
            raise BundleError(
                f"the network outputs {out.shape[1]} channels but the bundle's metadata names "
                f"{len(self.labels)} labels (network_data_format.outputs.pred.channel_def)"
            )
        return out

    def predict_input(
        self,
        path: str | os.PathLike,
        series_uid: str | None = None,
        force: bool = False,
        timer: StageTimer | None = None,
    ) -> Prediction:
        """Load, check, preprocess and segment one input; the labels are mapped back to its grid.

        Raises:
            MedsegError subclasses: unreadable input, unsuitable input (unless ``force``), bundle problems.
        """
        from monai.data import MetaTensor

        timer = timer or StageTimer()
        with timer.stage("load"):
            data, rest = self.load(path, series_uid)
        image = data[self.input_key]
        with timer.stage("check"):
            suitability = check_suitability(image, self.input_format, self.spatial_dims, force=force)
        if suitability.forced:
            logger.warning(
                "input does not fit the bundle (%s); segmenting anyway (force=True)", suitability.message()
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
        if self.components is not None:
            with timer.stage("postprocess"):
                labelmap = self.components(labelmap)
        return Prediction(
            labelmap=labelmap,
            affine=original_affine,
            geometry=geometry,
            meta=meta,
            display=display,
            net_shape=net_shape,
            suitability=suitability,
        )

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
        partial file (:func:`medseg.segment.outputs.write_outputs`).

        Raises:
            MedsegError subclasses: unreadable input, unsuitable input (unless ``force``), bundle problems.
        """
        timer = StageTimer()
        out_dir = Path(output_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"output {out_dir} exists and is not a folder")
        prediction = self.predict_input(path, series_uid, force=force, timer=timer)
        return write_outputs(
            prediction,
            out_dir,
            self.bundle,
            self.specs,
            self.settings(),
            timer,
            fork=self.parallel_outputs,
            rtstruct=self.rtstruct,
        )

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
