"""Geometry of DICOM slice stacks: sorting, validation and the world affine.

DICOM positions are in the patient LPS frame (+x towards the patient's left, +y posterior,
+z superior). Slices are sorted by their position projected on the slice normal (the cross
product of the row and column direction cosines), never by file name or InstanceNumber,
and the stack is refused when it is not a regular grid: a missing slice, uneven spacing,
slices that run off the normal (gantry tilt, shear), or two slices at one position.

The affine maps voxel indices (i, j, k) -- i along a row (columns), j along a column (rows),
k along the sorted slices -- to world millimetres, exactly as ITK, ITK-SNAP and a dcm2niix
conversion index the volume. :func:`lps_to_ras` turns it into MONAI's RAS convention, as
``ITKReader(affine_lps_to_ras=True)`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import aff2axcodes

from medseg.errors import GeometryError, InputError

__all__ = [
    "MAX_GAP_RATIO",
    "MAX_SPACING_DEVIATION",
    "MAX_TILT_DEGREES",
    "MAX_ORIENTATION_DIFFERENCE",
    "GeometryProblem",
    "StackGeometry",
    "slice_normal",
    "analyse_stack",
    "lps_affine",
    "lps_to_ras",
    "orientation_code",
    "resample_labels_nearest",
]

# A gap larger than this multiple of the median spacing is a missing slice.
MAX_GAP_RATIO = 1.5
# Largest tolerated relative difference between slice gaps (neighbouring, or from the median).
MAX_SPACING_DEVIATION = 0.01
# Largest tolerated angle between the step from one slice to the next and the slice normal.
MAX_TILT_DEGREES = 0.5
# Largest tolerated difference of a direction cosine between slices of one series.
MAX_ORIENTATION_DIFFERENCE = 1e-3
# Two slices closer than this (mm, along the normal) sit at the same position.
_SAME_POSITION_MM = 1e-3


@dataclass(frozen=True)
class GeometryProblem:
    """One reason a series cannot be used as a volume.

    Attributes:
        error: the exception class to raise when the series is loaded.
        message: one line saying what is wrong and what to do.
        fatal: False for problems that are only reported (the series still loads).
    """

    error: type[InputError]
    message: str
    fatal: bool = True


@dataclass(frozen=True)
class StackGeometry:
    """The result of :func:`analyse_stack`.

    Attributes:
        order: indices into the input positions, sorted along the slice normal.
        normal: unit slice normal (LPS).
        step: LPS vector from one slice to the next (first to last over ``n - 1``).
        spacing: median distance between neighbouring slices along the normal (mm).
        max_tilt_degrees: largest angle between a slice-to-slice step and the normal.
        max_spacing_deviation_mm: largest absolute difference of a gap from the median gap.
        problems: what is wrong with the stack; empty for a regular grid.
    """

    order: np.ndarray
    normal: np.ndarray
    step: np.ndarray
    spacing: float
    max_tilt_degrees: float
    max_spacing_deviation_mm: float
    problems: tuple[GeometryProblem, ...]


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    """Unit normal of the slice plane from ImageOrientationPatient (row cosines, column cosines).

    Args:
        orientation: the six direction cosines of ImageOrientationPatient.

    Raises:
        GeometryError: the cosines are not finite, zero, or parallel.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        raise GeometryError(f"invalid ImageOrientationPatient {list(iop)}: need six finite direction cosines")
    normal = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-3:
        raise GeometryError(
            f"invalid ImageOrientationPatient {list(iop)}: row and column directions are zero or parallel"
        )
    return normal / norm


def _describe(index: int, names: Sequence[str] | None) -> str:
    return f"slice {index + 1}" + (f" ({names[index]})" if names else "")


def analyse_stack(
    positions: np.ndarray,
    orientation: Sequence[float],
    single_slice_spacing: float | None = None,
    names: Sequence[str] | None = None,
    label: str = "series",
) -> StackGeometry:
    """Sort slices along the normal and check that they form a regular grid.

    Args:
        positions: (n, 3) ImagePositionPatient of each slice (LPS, mm), in any order.
        orientation: the ImageOrientationPatient shared by the slices.
        single_slice_spacing: slice spacing to use when there is only one slice
            (SpacingBetweenSlices or SliceThickness).
        names: optional name of each slice (file name, frame), in input order, for messages.
        label: how messages name the stack, e.g. ``"series 1.2.3"``.

    Returns:
        The sort order, the slice step and any problems found (never raised here).
    """
    pos = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    normal = slice_normal(orientation)
    n = len(pos)
    problems: list[GeometryProblem] = []
    if not np.all(np.isfinite(pos)):
        problems.append(GeometryProblem(GeometryError, f"{label} has a non-finite ImagePositionPatient"))
        return StackGeometry(np.arange(n), normal, normal.copy(), float("nan"), 0.0, 0.0, tuple(problems))
    depth = pos @ normal
    # highdicom >= 0.24 sorts and checks stacks (spatial.get_volume_positions); 0.22 (MONAI Label stack) cannot
    # stable sort so that identical positions keep a reproducible order for the message
    order = np.argsort(depth, kind="stable")
    sorted_names = [names[i] for i in order] if names else None
    if n == 1:
        spacing = float(single_slice_spacing) if single_slice_spacing and single_slice_spacing > 0 else 1.0
        return StackGeometry(order, normal, normal * spacing, spacing, 0.0, 0.0, ())

    sorted_pos = pos[order]
    gaps = np.diff(depth[order])
    same = np.flatnonzero(gaps < _SAME_POSITION_MM)
    if same.size:
        i = int(same[0])
        problems.append(
            GeometryProblem(
                GeometryError,
                f"{label} has {same.size} repeated slice position(s): "
                f"{_describe(i, sorted_names)} and {_describe(i + 1, sorted_names)} are both at "
                f"{depth[order][i]:.3f} mm along the normal (several echoes, phases or acquisitions in one "
                "series?); split the series so that each position occurs once",
            )
        )
        return StackGeometry(order, normal, normal.copy(), float("nan"), 0.0, 0.0, tuple(problems))

    spacing = float(np.median(gaps))
    step = (sorted_pos[-1] - sorted_pos[0]) / (n - 1)
    steps = np.diff(sorted_pos, axis=0)
    cosines = np.clip((steps @ normal) / np.linalg.norm(steps, axis=1), -1.0, 1.0)
    tilts = np.degrees(np.arccos(cosines))
    deviation = np.abs(gaps - spacing)
    result = dict(order=order, normal=normal, step=step, spacing=spacing)
    stats = dict(max_tilt_degrees=float(tilts.max()), max_spacing_deviation_mm=float(deviation.max()))

    worst_gap = int(np.argmax(gaps))
    if gaps[worst_gap] > MAX_GAP_RATIO * spacing:
        problems.append(
            GeometryProblem(
                GeometryError,
                f"{label} has a missing slice: gap of {gaps[worst_gap]:.4g} mm between "
                f"{_describe(worst_gap, sorted_names)} and {_describe(worst_gap + 1, sorted_names)} "
                f"(median spacing {spacing:.4g} mm); re-export the complete series",
            )
        )
    else:
        tolerance = MAX_SPACING_DEVIATION * spacing
        neighbour = np.abs(np.diff(gaps))
        if neighbour.size and neighbour.max() > tolerance:
            i = int(np.argmax(neighbour))
            problems.append(
                GeometryProblem(
                    GeometryError,
                    f"{label} has uneven slice spacing: gaps of {gaps[i]:.4g} mm and {gaps[i + 1]:.4g} mm "
                    f"around {_describe(i + 1, sorted_names)} (median {spacing:.4g} mm, tolerance "
                    f"{MAX_SPACING_DEVIATION:.0%}); re-export the series or resample it to a regular grid",
                )
            )
        elif deviation.max() > tolerance:
            i = int(np.argmax(deviation))
            problems.append(
                GeometryProblem(
                    GeometryError,
                    f"{label} has uneven slice spacing: gap of {gaps[i]:.4g} mm between "
                    f"{_describe(i, sorted_names)} and {_describe(i + 1, sorted_names)} differs from the median "
                    f"{spacing:.4g} mm by more than {MAX_SPACING_DEVIATION:.0%}; re-export the series or "
                    "resample it to a regular grid",
                )
            )
    worst_tilt = int(np.argmax(tilts))
    if tilts[worst_tilt] > MAX_TILT_DEGREES:
        problems.append(
            GeometryProblem(
                GeometryError,
                f"{label} has tilted or sheared slices (gantry tilt?): the step from "
                f"{_describe(worst_tilt, sorted_names)} to {_describe(worst_tilt + 1, sorted_names)} is "
                f"{tilts[worst_tilt]:.2f} degrees off the slice normal (tolerance {MAX_TILT_DEGREES} degrees); "
                "reconstruct without tilt or resample it (e.g. dcm2niix gantry-tilt correction) first",
            )
        )
    return StackGeometry(**result, **stats, problems=tuple(problems))


def lps_affine(
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    origin: Sequence[float],
    step: Sequence[float],
) -> np.ndarray:
    """The 4x4 voxel-to-LPS affine of a slice stack.

    Args:
        orientation: ImageOrientationPatient: cosines of the row direction (along which the column
            index grows), then of the column direction (along which the row index grows).
        pixel_spacing: DICOM PixelSpacing: ``[0]`` is the distance between rows (along the column
            direction), ``[1]`` the distance between columns (along the row direction).
        origin: ImagePositionPatient of the first sorted slice (centre of its first voxel).
        step: LPS vector from one slice to the next.
    """
    iop = np.asarray(orientation, dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * float(pixel_spacing[1])
    affine[:3, 1] = iop[3:] * float(pixel_spacing[0])
    affine[:3, 2] = np.asarray(step, dtype=np.float64)
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """Convert an LPS affine to RAS (or back) by negating the first two world axes."""
    # highdicom >= 0.24 has spatial.convert_affine_to_convention; 0.22 (MONAI Label stack) has not
    out = np.array(affine, dtype=np.float64, copy=True)
    sr = out.shape[0] - 1
    flip = np.ones(sr + 1)
    flip[: min(2, sr)] = -1
    return flip[:, None] * out


def orientation_code(ras_affine: np.ndarray) -> str:
    """Letters of the world directions the voxel axes point to, e.g. ``"LPS"`` for a plain DICOM axial stack.

    Args:
        ras_affine: voxel-to-RAS affine (as in MONAI's and nibabel's convention).
    """
    codes = aff2axcodes(np.asarray(ras_affine, dtype=np.float64))
    return "".join(c if c is not None else "?" for c in codes)


def resample_labels_nearest(
    labels: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    dst_shape: Sequence[int],
    chunk_voxels: int = 1 << 22,
) -> np.ndarray:
    """Nearest-neighbour look-up of a label volume onto another grid through the world coordinates.

    Every destination voxel centre is mapped to the source grid (``inv(src_affine) @ dst_affine``)
    and takes the label of the nearest source voxel (rounding half to even, as ``grid_sample``'s
    nearest mode does), 0 outside the source volume. Axis-aligned mappings (flips, permutations,
    scaling, shifts: what Orientation, Spacing, crops and pads produce) are done per axis without
    a coordinate grid; oblique ones in chunks of ``chunk_voxels``.

    ``scipy.ndimage.affine_transform(order=0)`` gives the same labels on generic oblique mappings,
    but rounds ties half up: an in-plane rotated series mapped from a 2 mm network grid (half-voxel
    offsets along the slices) then differs in about a sixth of the voxels, so it is not used.

    Args:
        labels: source label volume (X, Y, Z).
        src_affine: its voxel-to-world affine.
        dst_affine: voxel-to-world affine of the destination grid (same world frame).
        dst_shape: destination shape (I, J, K).
    """
    labels = np.asarray(labels)
    mapping = np.linalg.solve(
        np.asarray(src_affine, dtype=np.float64), np.asarray(dst_affine, dtype=np.float64)
    )
    linear, offset = mapping[:3, :3], mapping[:3, 3]
    dst_shape = tuple(int(s) for s in dst_shape)
    out = np.zeros(dst_shape, dtype=labels.dtype)
    nonzero = np.abs(linear) > 1e-9 * max(1.0, float(np.abs(linear).max()))
    if (nonzero.sum(axis=0) == 1).all() and (nonzero.sum(axis=1) == 1).all():
        # source axis s is driven by destination axis d alone: one index vector per axis
        per_dst: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * 3
        src_axis_of = [0, 0, 0]
        valid = []
        for s in range(3):
            d = int(np.flatnonzero(nonzero[s])[0])
            coords = np.rint(linear[s, d] * np.arange(dst_shape[d]) + offset[s]).astype(np.int64)
            ok = (coords >= 0) & (coords < labels.shape[s])
            per_dst[d] = coords
            src_axis_of[d] = s
            valid.append((d, ok))
        inside = [np.ones(n, dtype=bool) for n in dst_shape]
        for d, ok in valid:
            inside[d] = ok
        if not all(v.any() for v in inside):
            return out
        # gather the inside block: source indexed by (dest axis 0's source axis, ...) then transposed
        idx = [per_dst[d][inside[d]] for d in range(3)]
        block = labels.transpose(src_axis_of)[np.ix_(idx[0], idx[1], idx[2])]
        out[np.ix_(*[np.flatnonzero(v) for v in inside])] = block
        return out
    # oblique: chunks of destination slices
    plane = dst_shape[0] * dst_shape[1]
    step = max(1, chunk_voxels // max(plane, 1))
    ii, jj = np.meshgrid(np.arange(dst_shape[0]), np.arange(dst_shape[1]), indexing="ij")
    base = np.stack([ii.ravel(), jj.ravel()], axis=0).astype(np.float64)
    for k0 in range(0, dst_shape[2], step):
        ks = np.arange(k0, min(k0 + step, dst_shape[2]))
        pts = np.concatenate(
            [np.tile(base, (1, len(ks))), np.repeat(ks, plane)[None, :].astype(np.float64)], axis=0
        )
        src = np.rint(linear @ pts + offset[:, None]).astype(np.int64)
        ok = np.all((src >= 0) & (src < np.asarray(labels.shape)[:, None]), axis=0)
        values = np.zeros(pts.shape[1], dtype=labels.dtype)
        values[ok] = labels[src[0, ok], src[1, ok], src[2, ok]]
        out[:, :, ks] = values.reshape(len(ks), dst_shape[0], dst_shape[1]).transpose(1, 2, 0)
    return out
