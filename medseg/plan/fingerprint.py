"""Dataset fingerprint: what the planner's rules need to know about a labelled dataset.

As nnU-Net v2's ``DatasetFingerprintExtractor`` and MONAI Auto3DSeg's ``DataAnalyzer`` do, every
case is read once (in parallel processes) and summarised: its voxel spacing, shape, shape after
cropping to the nonzero region, orientation, and a fixed-seed sample of the intensities of its
labelled voxels; the samples of all cases give each channel's foreground intensity statistics
(mean, std, percentiles 0.5 and 99.5: what CT normalisation clips to), and the label voxel
counts give each class's frequency (what tells a rare class).

Reading a case validates it (:func:`medseg.data.dataset.read_case`), so extracting the fingerprint
also refuses a bad dataset, before the planner writes anything.

The result is deterministic: the same dataset gives the same JSON, whatever the number of
processes (each case is sampled with the same seed, results are kept in case order, floats are
rounded to 6 significant digits). It holds no timing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from medseg.data.dataset import Case, DatasetSpec, read_case

__all__ = [
    "FINGERPRINT_VERSION",
    "FOREGROUND_SAMPLES_PER_CASE",
    "SAMPLING_SEED",
    "case_fingerprint",
    "extract_fingerprint",
    "orientation",
]

FINGERPRINT_VERSION = 1
# nnU-Net v2 samples 10 000 foreground voxels per case with seed 1234; so does medseg.
FOREGROUND_SAMPLES_PER_CASE = 10_000
SAMPLING_SEED = 1234
_DIGITS = 6


def _round(value: float) -> float:
    """``value`` to 6 significant digits (stable JSON across platforms' float formatting)."""
    return float(f"{float(value):.{_DIGITS}g}")


def orientation(affine: np.ndarray) -> str:
    """Axis codes of an affine, e.g. ``"RAS"``; ``""`` for a 2-D (photo) grid, which has none."""
    if affine.shape != (4, 4):
        return ""
    import nibabel as nib

    return "".join(nib.aff2axcodes(affine))


def _nonzero_box(image: np.ndarray) -> tuple[int, ...]:
    """Shape of the bounding box of voxels nonzero in any channel (nnU-Net's crop to nonzero)."""
    mask = np.any(image != 0, axis=0)
    if not mask.any():
        return tuple(int(s) for s in mask.shape)
    sizes = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        sizes.append(int(hit[-1] - hit[0] + 1))
    return tuple(sizes)


def _foreground_skewness(label: np.ndarray) -> list[float]:
    """Per axis, the skewness of the foreground voxels' coordinates (0 for a symmetric shape).

    Its sign tells which way a shape leans along the axis; a dataset whose cases lean both ways
    holds both mirror images of the anatomy, so mirroring along that axis is safe (the planner's
    augmentation rule).
    """
    coords = np.argwhere(label > 0).astype(np.float64)
    if len(coords) < 2:
        return [0.0] * label.ndim
    centred = coords - coords.mean(axis=0)
    var = (centred**2).mean(axis=0)
    skew = np.where(var > 0, (centred**3).mean(axis=0) / np.maximum(var, 1e-12) ** 1.5, 0.0)
    return [round(float(s), 4) + 0.0 for s in skew]  # + 0.0: no "-0.0" in the JSON


def _geometry_is_bare(affine: np.ndarray) -> bool:
    """True when the affine is only a voxel size: identity directions and an origin within 2 voxels of 0.

    Such headers (UA-MT's left-atrium scans, the MSD hippocampus crops, every PNG) kept no scanner
    geometry, so their axes cannot be told apart anatomically.
    """
    rank = affine.shape[0] - 1
    spacing = np.sqrt((affine[:rank, :rank] ** 2).sum(axis=0))
    direction = affine[:rank, :rank] / spacing
    origin_voxels = np.abs(affine[:rank, rank]) / spacing
    return bool(np.allclose(direction, np.eye(rank), atol=1e-3) and origin_voxels.max() <= 2.0)


def case_fingerprint(spec: DatasetSpec, case: Case) -> dict[str, Any]:
    """Read and check one case, and summarise it.

    Args:
        spec: the dataset.
        case: one of its cases.

    Returns:
        ``{"case_id", "spacing", "shape", "shape_after_crop", "orientation", "bare_geometry",
        "foreground_skewness", "label_voxels", "foreground_samples"}``; ``foreground_samples`` (``(C, n)`` float32, at most
        :data:`FOREGROUND_SAMPLES_PER_CASE` labelled voxels per channel, drawn with
        :data:`SAMPLING_SEED`) is consumed by :func:`extract_fingerprint` and not written out.

    Raises:
        DatasetError: the case is unreadable or invalid (see :func:`medseg.data.dataset.read_case`).
    """
    data = read_case(spec, case)
    counts = np.bincount(data.label.ravel().astype(np.int64), minlength=max(spec.labels) + 1)
    foreground = data.image[:, data.label > 0]
    if foreground.shape[1] > FOREGROUND_SAMPLES_PER_CASE:
        rng = np.random.default_rng(SAMPLING_SEED)
        index = np.sort(rng.choice(foreground.shape[1], FOREGROUND_SAMPLES_PER_CASE, replace=False))
        foreground = foreground[:, index]
    return {
        "case_id": case.case_id,
        "spacing": [_round(s) for s in data.spacing],
        "shape": list(data.shape),
        "shape_after_crop": list(_nonzero_box(data.image)),
        "orientation": orientation(data.affine),
        "bare_geometry": _geometry_is_bare(data.affine),
        "foreground_skewness": _foreground_skewness(data.label),
        "label_voxels": {str(k): int(counts[k]) for k in spec.labels},
        "foreground_samples": foreground.astype(np.float32, copy=False),
    }


def _case_job(args: tuple[DatasetSpec, Case]) -> dict[str, Any]:
    return case_fingerprint(*args)


def _intensity_stats(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {k: 0.0 for k in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5")}
    p05, p50, p995 = np.percentile(samples, [0.5, 50.0, 99.5])
    return {
        "mean": _round(samples.mean(dtype=np.float64)),
        "std": _round(samples.std(dtype=np.float64)),
        "median": _round(p50),
        "min": _round(samples.min()),
        "max": _round(samples.max()),
        "percentile_00_5": _round(p05),
        "percentile_99_5": _round(p995),
    }


def _default_workers() -> int:
    """The CPU cores this process may use, at most 8 (reading is I/O and decompression bound)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, usable))


def _iterate(
    spec: DatasetSpec, cases: Sequence[Case], workers: int, progress: bool
) -> Iterator[dict[str, Any]]:
    """Fingerprints of ``cases`` in order, read by ``workers`` processes (1: in this process)."""
    from tqdm.auto import tqdm

    jobs = [(spec, case) for case in cases]
    bar = dict(total=len(jobs), desc="fingerprint", unit="case", disable=not progress, leave=False)
    if workers <= 1:
        yield from tqdm(map(_case_job, jobs), **bar)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # map keeps case order; chunks amortise the inter-process traffic of small cases
        chunk = max(1, len(jobs) // (workers * 8))
        try:
            yield from tqdm(pool.map(_case_job, jobs, chunksize=chunk), **bar)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def extract_fingerprint(
    spec: DatasetSpec, workers: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """Fingerprint of a dataset (``plans/fingerprint.json``).

    Args:
        spec: the dataset (from :func:`medseg.data.dataset.open_dataset`).
        workers: processes reading cases (default: the usable CPU cores, at most 8); 1 reads in
            this process.
        progress: show a progress bar (tqdm) on stderr.

    Returns:
        ``{"fingerprint_version", "dataset", "cases": [per case, in case order],
        "foreground_intensity": {channel: stats}, "label_voxels": {label: count},
        "label_fraction": {label: fraction of all voxels}}``.

    Raises:
        DatasetError: a case is unreadable or invalid; the message names it.
    """
    workers = _default_workers() if workers is None else max(1, int(workers))
    cases, samples = [], []
    for result in _iterate(spec, spec.cases, min(workers, len(spec.cases)), progress):
        samples.append(result.pop("foreground_samples"))
        cases.append(result)
    pooled = np.concatenate(samples, axis=1) if samples else np.zeros((spec.num_channels, 0), np.float32)
    totals = {str(k): int(sum(c["label_voxels"][str(k)] for c in cases)) for k in spec.labels}
    all_voxels = max(1, sum(totals.values()))
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "dataset": {
            "name": spec.name,
            "layout": spec.layout,
            "spatial_dims": spec.spatial_dims,
            "labels": {str(k): v for k, v in spec.labels.items()},
            "channels": {str(k): v for k, v in spec.channels.items()},
            "file_ending": spec.file_ending,
            "num_cases": len(cases),
            "licence": str(spec.meta.get("licence") or spec.meta.get("license") or ""),
            "reference": str(spec.meta.get("reference") or ""),
            "description": str(spec.meta.get("description") or ""),
            # DICOM SEG codes of the labels, when dataset.json has a "concepts" block (segment_codes format)
            "concepts": spec.meta.get("concepts") if isinstance(spec.meta.get("concepts"), dict) else None,
        },
        "sampling": {"foreground_samples_per_case": FOREGROUND_SAMPLES_PER_CASE, "seed": SAMPLING_SEED},
        "cases": cases,
        "foreground_intensity": {
            str(k): _intensity_stats(pooled[i]) for i, k in enumerate(sorted(spec.channels))
        },
        "label_voxels": totals,
        "label_fraction": {k: _round(v / all_voxels) for k, v in totals.items()},
    }
