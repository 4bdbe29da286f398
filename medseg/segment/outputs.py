"""Write one segmentation's outputs: NIfTI, DICOM SEG, RTSTRUCT, overlay PNG and report, all or nothing.

:class:`medseg.segment.pipeline.Segmenter` predicts a label map on the input's grid; this module
turns that :class:`Prediction` into files. Every output is first written into a hidden staging
folder inside the output folder and moved into place only when all of them are complete, so a
failed or interrupted run leaves no partial file. For DICOM input the SEG (the slowest output) is
written by a forked child process (:mod:`medseg.background`) while this one writes the others,
the RT structure set (:mod:`medseg.io.rtstruct`) included.
"""

from __future__ import annotations

import contextlib
import logging
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
from medseg.errors import DicomError
from medseg.io.atomic import atomic_write_json
from medseg.io.dicom_seg import write_seg
from medseg.io.formats import file_format
from medseg.io.rtstruct import write_rtstruct
from medseg.io.seg_concepts import SegmentSpec
from medseg.segment.suitability import Suitability

__all__ = [
    "OUTPUT_FILES",
    "Prediction",
    "SegmentResult",
    "StageTimer",
    "build_report",
    "label_rows",
    "write_outputs",
]

logger = logging.getLogger(__name__)

OUTPUT_FILES = {
    "segmentation": "segmentation.nii.gz",
    "seg": "segmentation.dcm",
    "rtstruct": "rtstruct.dcm",
    "overlay": "overlay.png",
    "report": "report.json",
}


@dataclass
class SegmentResult:
    """What one run wrote.

    Attributes:
        output_dir: the folder holding the outputs.
        files: output kind -> path (``segmentation``, ``seg`` and ``rtstruct`` for DICOM input,
            ``overlay``, ``report``).
        report: the report written as ``report.json``.
    """

    output_dir: Path
    files: dict[str, Path]
    report: dict[str, Any] = field(repr=False)

    @property
    def volumes_ml(self) -> dict[str, float]:
        return {item["name"]: item["volume_ml"] for item in self.report["labels"]}


@dataclass
class Prediction:
    """A label map on the input's grid, with what the outputs need to know about the input.

    Attributes:
        labelmap: class label per voxel of the input (I, J, K).
        affine: the input's voxel-to-world (RAS) affine.
        geometry: the input's shape and spacing (:func:`medseg.segment.suitability.image_geometry`).
        meta: the input's metadata (DICOM UIDs, description, file name ...).
        display: the input's first channel, compact, for the overlay.
        net_shape: spatial shape of the network grid the labels were predicted on.
        suitability: the result of the suitability check.
    """

    labelmap: np.ndarray
    affine: np.ndarray
    geometry: Mapping[str, Any]
    meta: Mapping[str, Any]
    display: np.ndarray = field(repr=False)
    net_shape: list[int]
    suitability: Suitability

    @property
    def is_dicom(self) -> bool:
        return bool(self.meta.get("sop_instance_uids"))


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


class StageTimer:
    """Wall time of each stage, and the process' peak resident memory at the end of each."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
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

    def record_total(self) -> None:
        """Set ``total``: the time since the timer was made."""
        self.timings["total"] = round(time.perf_counter() - self.start, 4)


def _label_counts(labelmap: np.ndarray, n_labels: int, chunk: int = 1 << 22) -> np.ndarray:
    """Voxels per label value, in chunks (``np.bincount`` of the whole volume would make an int64 copy)."""
    flat = labelmap.reshape(-1)
    counts = np.zeros(max(n_labels, int(labelmap.max(initial=0)) + 1), dtype=np.int64)
    for start in range(0, flat.size, chunk):
        counts += np.bincount(flat[start : start + chunk], minlength=len(counts))
    return counts


def label_rows(
    specs: Sequence[SegmentSpec], labelmap: np.ndarray, affine: np.ndarray
) -> list[dict[str, Any]]:
    """One report row per segment: value, name, codes, colour, voxels and volume (mL).

    Args:
        specs: the bundle's segments (:func:`medseg.io.seg_concepts.segment_specs`).
        labelmap: label per voxel.
        affine: its voxel-to-world affine (mm), which gives the voxel volume.
    """
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0
    counts = _label_counts(labelmap, max((spec.value for spec in specs), default=0) + 1)
    return [
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
        for spec in specs
    ]


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def build_report(
    bundle: Any,
    settings: Mapping[str, Any],
    prediction: Prediction,
    rows: list[dict[str, Any]],
    timer: StageTimer,
    seg_uids: Mapping[str, str],
    rtstruct_uids: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``report.json`` content of one run.

    Args:
        bundle: the :class:`medseg.bundle.Bundle` (name, version, task).
        settings: the run's settings (:meth:`Segmenter.settings`).
        prediction: what was predicted, and about which input.
        rows: :func:`label_rows` of the prediction.
        timer: the run's stage timings.
        seg_uids: ``series_instance_uid`` / ``sop_instance_uid`` of the DICOM SEG, if one was written.
        rtstruct_uids: the same of the RTSTRUCT, if one was written.
    """
    from nibabel.orientations import aff2axcodes

    meta, geometry, affine = prediction.meta, prediction.geometry, prediction.affine
    is_dicom = prediction.is_dicom
    filename = str(meta.get("filename_or_obj", ""))
    return {
        "notice": f"Research use only, not for diagnosis. Automatic segmentation by medseg {__version__}.",
        "medseg_version": __version__,
        "bundle": {
            "name": bundle.name,
            "version": bundle.version,
            "task": bundle.metadata.get("task", ""),
        },
        "input": {
            "format": "dicom" if is_dicom else (file_format(filename) or "nifti"),
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
        "suitability": prediction.suitability.to_dict(),
        "settings": {**settings, "network_grid_shape": prediction.net_shape},
        "labels": rows,
        "total_volume_ml": round(sum(r["volume_ml"] for r in rows), 4),
        "outputs": {
            "segmentation": OUTPUT_FILES["segmentation"],
            "seg": OUTPUT_FILES["seg"] if is_dicom else None,
            "overlay": OUTPUT_FILES["overlay"],
            "seg_series_uid": seg_uids.get("series_instance_uid"),
            "seg_sop_instance_uid": seg_uids.get("sop_instance_uid"),
            "rtstruct": OUTPUT_FILES["rtstruct"] if rtstruct_uids else None,
            "rtstruct_series_uid": (rtstruct_uids or {}).get("series_instance_uid"),
            "rtstruct_sop_instance_uid": (rtstruct_uids or {}).get("sop_instance_uid"),
        },
        "timings_s": dict(timer.timings),
        "peak_rss_mb_after": dict(timer.peak_rss_mb),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_outputs(
    prediction: Prediction,
    output_dir: str | os.PathLike,
    bundle: Any,
    specs: Sequence[SegmentSpec],
    settings: Mapping[str, Any],
    timer: StageTimer,
    fork: bool = True,
    rtstruct: bool = True,
) -> SegmentResult:
    """Write the NIfTI, the DICOM SEG and RTSTRUCT (DICOM input only), the overlay and the report, all or nothing.

    Args:
        prediction: the label map and its input.
        output_dir: the folder to write into (created when missing).
        bundle: the :class:`medseg.bundle.Bundle` that made the prediction.
        specs: its segments (names, codes, colours).
        settings: the run's settings, for the report.
        timer: the run's timer; the writing stages are added to it.
        fork: write the SEG in a forked child process (Linux only; elsewhere one after another).
        rtstruct: write the RT structure set ``rtstruct.dcm`` for DICOM input (a source series
            without a frame of reference gets none, with a warning).
    """
    from monai.data import MetaTensor

    from medseg.io import save_nifti
    from medseg.segment.overlay import render_overlay

    out_dir = Path(output_dir)
    labelmap, affine, meta = prediction.labelmap, prediction.affine, prediction.meta
    rows = label_rows(specs, labelmap, affine)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir / f".medseg-segment-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    seg_job = None
    try:
        files: dict[str, Path] = {}
        seg_uids: dict[str, str] = {}
        rtstruct_uids: dict[str, str] = {}
        if prediction.is_dicom:
            # the SEG is written by a forked child while this process writes the other outputs
            seg_job = background.start(
                write_seg,
                labelmap,
                meta,
                list(specs),
                staging / OUTPUT_FILES["seg"],
                fork=fork,
                algorithm_name=bundle.name,
                algorithm_version=bundle.version,
                software_versions=f"medseg {__version__}",
            )
        with timer.stage("write_nifti"):
            files["segmentation"] = save_nifti(
                MetaTensor(labelmap, affine=affine), staging / OUTPUT_FILES["segmentation"]
            )
        with timer.stage("overlay"):
            description = meta.get("series_description")
            files["overlay"] = render_overlay(
                prediction.display,
                labelmap,
                affine,
                {s.value: s.label for s in specs},
                {s.value: s.color for s in specs},
                staging / OUTPUT_FILES["overlay"],
                title=f"{bundle.name} {bundle.version}" + (f" | {description}" if description else ""),
                volumes_ml={row["value"]: row["volume_ml"] for row in rows},
            )
        if prediction.is_dicom and rtstruct:
            with timer.stage("write_rtstruct"):
                try:
                    rtstruct_uids = write_rtstruct(
                        labelmap,
                        affine,
                        meta,
                        list(specs),
                        staging / OUTPUT_FILES["rtstruct"],
                        algorithm_name=bundle.name,
                        algorithm_version=bundle.version,
                        software_versions=f"medseg {__version__}",
                    )
                    files["rtstruct"] = staging / OUTPUT_FILES["rtstruct"]
                except DicomError as exc:  # e.g. no frame of reference: the SEG still carries the result
                    logger.warning("no RTSTRUCT written: %s", exc)
        if seg_job is not None:
            with timer.stage("wait_seg"):
                job, seg_job = seg_job, None
                seg_uids = job.result()
            files["seg"] = staging / OUTPUT_FILES["seg"]
            # the child's own time; "wait_seg" is what the parent still waited for it
            timer.timings["write_seg"] = round(job.seconds, 4)
        timer.record_total()
        report = build_report(bundle, settings, prediction, rows, timer, seg_uids, rtstruct_uids)
        files["report"] = staging / OUTPUT_FILES["report"]
        atomic_write_json(files["report"], report, default=_json_default)
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
