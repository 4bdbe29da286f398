"""Segment images with a MONAI bundle: NIfTI, DICOM SEG, overlay and report (research use only).

Public API:

* :class:`Segmenter` -- a bundle's network, preprocessing and inferer; ``run(input, outdir)``
  segments one input and writes ``segmentation.nii.gz``, ``segmentation.dcm`` (DICOM input),
  ``overlay.png`` and ``report.json``.
* :func:`segment` -- one input or a whole folder (batch), as ``medseg segment`` does.
* :func:`run_batch` -- a batch: one result folder each, ``manifest.jsonl``, resume, Ray workers.
* :func:`check_suitability` -- does an image fit a bundle (modality, channels, spacing, extent)?
* :func:`write_seg` / :func:`read_seg` -- DICOM SEG writer, and reader mapping any SEG onto its
  source series grid.
* :func:`render_overlay` -- the overlay PNG.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence

from medseg.errors import ConfigError
from medseg.io.dicom_seg import SegSegment, SegVolume, read_seg, write_seg
from medseg.io.geometry import resample_labels_nearest
from medseg.io.seg_concepts import SegmentSpec, segment_specs
from medseg.segment.batch import BatchSettings, exit_code, read_manifest, run_batch
from medseg.segment.inputs import BatchResult, InputItem, discover_inputs
from medseg.segment.outputs import OUTPUT_FILES, SegmentResult
from medseg.segment.overlay import render_overlay
from medseg.segment.pipeline import Segmenter
from medseg.segment.suitability import (
    METADATA_KEYS,
    Suitability,
    UnsuitableInputError,
    check_suitability,
)

__all__ = [
    "segment",
    "Segmenter",
    "SegmentResult",
    "BatchResult",
    "InputItem",
    "OUTPUT_FILES",
    "METADATA_KEYS",
    "discover_inputs",
    "run_batch",
    "BatchSettings",
    "read_manifest",
    "exit_code",
    "check_suitability",
    "Suitability",
    "UnsuitableInputError",
    "SegmentSpec",
    "segment_specs",
    "write_seg",
    "read_seg",
    "SegVolume",
    "SegSegment",
    "render_overlay",
    "resample_labels_nearest",
]


def segment(
    input_path: str | os.PathLike | Sequence[str | os.PathLike],
    bundle: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    series_uid: str | None = None,
    device: str = "cpu",
    tta: bool = False,
    fast: bool = False,
    overlap: float | None = None,
    force: bool = False,
    progress: bool = False,
    segmenter: Segmenter | None = None,
    rtstruct: bool = True,
    precision: str | None = None,
    batch: BatchSettings | None = None,
    flag_of: Callable[[str], str] | None = None,
    low_memory: bool = False,
) -> BatchResult:
    """Segment one input, or every input of a folder, with a bundle (see :mod:`medseg.segment.inputs`).

    A single input's error is raised (a :class:`medseg.errors.MedsegError`); in a batch, failures
    are collected in :attr:`BatchResult.failures` and the other inputs still run. ``precision``
    (``auto``/``fp32``/``bf16``) is the network's, see :mod:`medseg.precision`. ``input_path`` may
    be several paths (always a batch); ``batch`` sets Ray workers and resume
    (:mod:`medseg.segment.batch`), ``flag_of`` how Ray workers name parameters in messages;
    ``low_memory`` runs the sliding window slab by slab (:mod:`medseg.segment.slabs`);
    ``rtstruct=False`` writes no RT structure set for DICOM input. An input that is a DICOMweb URL
    with a study query is fetched first (:mod:`medseg.segment.dicomweb`).
    """
    from medseg.segment.dicomweb import local_inputs

    with local_inputs(input_path) as local:  # a DICOMweb study query: its series, fetched
        return _segment_local(
            local, bundle, output_dir, series_uid=series_uid, device=device, tta=tta, fast=fast,
            overlap=overlap, force=force, progress=progress, segmenter=segmenter, rtstruct=rtstruct,
            precision=precision, batch=batch, flag_of=flag_of, low_memory=low_memory,
        )  # fmt: skip


def _segment_local(
    input_path: str | os.PathLike | Sequence[str | os.PathLike],
    bundle: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    series_uid: str | None,
    device: str,
    tta: bool,
    fast: bool,
    overlap: float | None,
    force: bool,
    progress: bool,
    segmenter: Segmenter | None,
    rtstruct: bool,
    precision: str | None,
    batch: BatchSettings | None,
    flag_of: Callable[[str], str] | None,
    low_memory: bool,
) -> BatchResult:
    items, single = discover_inputs(input_path, series_uid, exclude=output_dir)
    options = {"device": device, "tta": tta, "overlap": overlap, "fast": fast, "precision": precision,
               "rtstruct": rtstruct}
    options["low_memory"] = low_memory
    settings = dataclasses.replace(batch or BatchSettings(), progress=progress)
    if not single:  # one folder per input, manifest.jsonl, resume, Ray workers
        return run_batch(
            items, bundle, output_dir, options, force=force, settings=settings, segmenter=segmenter,
            flag_of=flag_of,
        )
    if settings.workers is not None or settings.resume:
        raise ConfigError(
            "workers and resume apply to a batch (a folder of several inputs, or several inputs); "
            "a single input runs in this process: drop them", param="workers",
        )
    runner = segmenter or Segmenter(bundle, **options)
    item = items[0]
    result = runner.run(item.path, output_dir, series_uid=item.series_uid, force=force)
    return BatchResult(results={item.name: result}, single=True)
