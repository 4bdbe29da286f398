"""Slice-stack geometry: sorting, tolerances, affine and orientation codes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import GeometryError
from medseg.io.dicom import scan_folder
from medseg.io.geometry import (
    MAX_SPACING_DEVIATION,
    MAX_TILT_DEGREES,
    analyse_stack,
    lps_affine,
    lps_to_ras,
    orientation_code,
    slice_normal,
)

pytestmark = pytest.mark.needs_data

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.mark.parametrize(
    ("orientation", "code"),
    [(AXIAL, "LPS"), (CORONAL, "LIP"), (SAGITTAL, "PIR")],
    ids=["axial", "coronal", "sagittal"],
)
def test_orientation_code_of_standard_planes(orientation, code: str) -> None:
    normal = slice_normal(orientation)
    affine = lps_to_ras(lps_affine(orientation, (0.5, 0.8), (10.0, 20.0, 30.0), normal * 3.0))
    assert orientation_code(affine) == code
    # LPS -> RAS negates the first two world rows only
    np.testing.assert_allclose(
        lps_to_ras(affine), lps_affine(orientation, (0.5, 0.8), (10.0, 20.0, 30.0), normal * 3.0)
    )


def test_pixel_spacing_order() -> None:
    # PixelSpacing[0] is between rows (along the column direction, j), [1] between columns (along a row, i)
    affine = lps_affine(AXIAL, (2.0, 0.5), (0, 0, 0), (0, 0, 1.0))
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.5, 2.0, 1.0])


def test_sorting_uses_the_normal_not_the_input_order() -> None:
    normal = slice_normal(SAGITTAL)  # (-1, 0, 0): slices advance towards the patient's right
    positions = np.array([normal * z + [0, 5, 7] for z in (3.0, 0.0, 2.0, 1.0)])
    result = analyse_stack(positions, SAGITTAL)
    assert result.order.tolist() == [1, 3, 2, 0] and not result.problems
    np.testing.assert_allclose(result.step, normal)
    assert result.spacing == pytest.approx(1.0)


def _stack(gaps: list[float], shear: float = 0.0) -> np.ndarray:
    z = np.concatenate([[0.0], np.cumsum(gaps)])
    return np.stack([z * shear, np.zeros_like(z), z], axis=1)


def _messages(positions: np.ndarray) -> list[str]:
    return [p.message for p in analyse_stack(positions, AXIAL).problems]


def test_regular_stack_has_no_problem() -> None:
    assert _messages(_stack([2.5] * 20)) == []


def test_missing_slice_threshold() -> None:
    assert any("missing slice" in m for m in _messages(_stack([2.5] * 5 + [5.0] + [2.5] * 5)))
    # 1.4x the median is not a missing slice, but it is uneven
    (message,) = _messages(_stack([2.5] * 5 + [3.5] + [2.5] * 5))
    assert "uneven" in message


def test_uneven_spacing_thresholds() -> None:
    within = 1 + 0.9 * MAX_SPACING_DEVIATION
    assert _messages(_stack([1.0] * 5 + [within] + [1.0] * 5)) == []
    beyond = 1 + 1.2 * MAX_SPACING_DEVIATION
    assert any("uneven" in m for m in _messages(_stack([1.0] * 5 + [beyond] + [1.0] * 5)))


def test_slow_drift_of_spacing_is_uneven() -> None:
    # each gap 0.4 % longer than the previous: neighbours agree within 1 %, the stack is not regular
    gaps = [1.0 * 1.004**i for i in range(12)]
    (message,) = _messages(_stack(gaps))
    assert "differs from the median" in message


def test_tilt_threshold() -> None:
    below = math.tan(math.radians(0.9 * MAX_TILT_DEGREES))
    assert _messages(_stack([1.0] * 10, shear=below)) == []
    above = math.tan(math.radians(1.2 * MAX_TILT_DEGREES))
    (message,) = _messages(_stack([1.0] * 10, shear=above))
    assert "off the slice normal" in message


def test_repeated_position() -> None:
    (message,) = _messages(_stack([1.0, 0.0, 1.0]))
    assert "repeated slice position" in message


def test_single_slice_uses_given_spacing() -> None:
    result = analyse_stack(np.array([[1.0, 2.0, 3.0]]), CORONAL, single_slice_spacing=6.5)
    np.testing.assert_allclose(result.step, slice_normal(CORONAL) * 6.5)


def test_invalid_orientation() -> None:
    with pytest.raises(GeometryError, match="parallel"):
        slice_normal((1, 0, 0, 1, 0, 0))


def test_real_series_are_far_inside_the_tolerances(shared_data: Path) -> None:
    # measured on the shared data: <= 0.008 degrees off the normal and <= 0.0004 mm spacing deviation
    checked = 0
    for series in scan_folder(shared_data).series:
        if series.geometry is None or len(series.frames) < 3:
            continue
        checked += 1
        assert series.geometry.max_tilt_degrees < MAX_TILT_DEGREES / 20, series.info.files[0]
        assert series.geometry.max_spacing_deviation_mm < 0.001, series.info.files[0]
    assert checked == 28
