"""Classical baselines (medseg.baselines.classical) on a real hippocampus case: contract (shape, dtype, labels, type), determinism."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medseg.baselines import classical

pytestmark = pytest.mark.needs_data

CASE = "hippocampus_001"
METHODS = [classical.otsu_segment, classical.region_growing_segment, classical.kmeans_segment]


@pytest.fixture(scope="module")
def case(hippocampus_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image_nii = nib.load(hippocampus_dir / "imagesTr" / f"{CASE}.nii.gz")
    label = np.asarray(nib.load(hippocampus_dir / "labelsTr" / f"{CASE}.nii.gz").dataobj).astype(np.int64)
    return np.asarray(image_nii.dataobj), label, image_nii.affine


def dice(pred: np.ndarray, label: np.ndarray, k: int) -> float:
    return 2.0 * np.sum((pred == k) & (label == k)) / (np.sum(pred == k) + np.sum(label == k))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_numpy_contract_and_determinism(method, case) -> None:
    image, label, _ = case
    assert image.dtype == np.uint8  # this case is stored as uint8: the methods must cope
    pred = method(image)
    assert isinstance(pred, np.ndarray)
    assert pred.shape == image.shape and pred.dtype == np.uint8
    assert set(np.unique(pred)) == {0, 1, 2}
    np.testing.assert_array_equal(method(image), pred)
    np.testing.assert_array_equal(method(image.astype(np.float32)), pred)
    # anatomical labels by position: label 1 lies anterior (higher axis-1 index) of label 2
    assert np.argwhere(pred == 1)[:, 1].mean() > np.argwhere(pred == 2)[:, 1].mean()
    # a baseline, not a network: it overlaps the hippocampus somewhat, far from a network's ~0.85
    scores = [dice(pred, label, k) for k in (1, 2)]
    assert 0.0 < np.mean(scores) < 0.5, scores


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_metatensor_in_metatensor_out(method, case) -> None:
    image, _, affine = case
    meta_image = MetaTensor(torch.as_tensor(image[None].astype(np.float32)), affine=torch.as_tensor(affine))
    pred = method(meta_image)
    assert isinstance(pred, MetaTensor)
    assert pred.shape == (1, *image.shape) and pred.dtype == torch.uint8
    torch.testing.assert_close(pred.affine, meta_image.affine)
    np.testing.assert_array_equal(pred[0].numpy(), method(image))  # RAS affine: same split axis

    # an affine whose anterior-posterior axis is array axis 2, pointing to lower indices
    permuted = np.ascontiguousarray(np.flip(np.swapaxes(image, 1, 2), axis=2))
    new_affine = np.array([[1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    moved = method(
        MetaTensor(torch.as_tensor(permuted[None].astype(np.float32)), affine=torch.as_tensor(new_affine))
    )
    anterior, posterior = np.argwhere(moved[0].numpy() == 1), np.argwhere(moved[0].numpy() == 2)
    assert anterior[:, 2].mean() < posterior[:, 2].mean()


def test_intensity_mode_orders_classes_by_intensity(case) -> None:
    image, _, _ = case
    values = image.astype(np.float64)
    for method in (classical.otsu_segment, classical.kmeans_segment):
        classes = method(image, num_classes=4, mode="intensity")
        assert set(np.unique(classes)) == {0, 1, 2, 3}
        means = [values[classes == k].mean() for k in range(4)]
        assert means == sorted(means), (method.__name__, means)
        assert values[classes == 0].max() <= values[classes == 1].min()  # thresholds: no overlap


def test_region_growing_seeds_and_threshold_mode(case) -> None:
    image, _, _ = case
    centre = classical.default_seed(image.shape)
    assert centre == (17, 25, 17)
    default = classical.region_growing_segment(image)
    np.testing.assert_array_equal(classical.region_growing_segment(image, seeds=[centre]), default)
    grown = classical.region_growing_segment(image, method="threshold", num_classes=2)
    assert set(np.unique(grown)) == {0, 1}
    assert grown[centre] == 1  # the seed is inside its region
    corner = classical.region_growing_segment(image, seeds=[(1, 1, 1)], num_classes=2)
    assert not np.array_equal(corner, grown)
    with pytest.raises(ValueError, match="not an index"):
        classical.region_growing_segment(image, seeds=[(0, 99, 0)])


def test_split_foreground() -> None:
    mask = np.zeros((4, 10, 3), dtype=bool)
    mask[:, 2:8] = True
    labels = classical.split_foreground(mask, 2, axis=1)
    assert (labels[:, 5:8] == 1).all() and (labels[:, 2:5] == 2).all() and (labels[~mask] == 0).all()
    flipped = classical.split_foreground(mask, 2, axis=1, anterior_high=False)
    assert (flipped[:, 2:5] == 1).all()
    assert set(np.unique(classical.split_foreground(mask, 3, axis=1))) == {0, 1, 2, 3}
    assert not classical.split_foreground(np.zeros((3, 3), dtype=bool), 2).any()


def test_2d_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (40, 30)).astype(np.float32)
    image[10:30, 8:22] += 4.0
    for method in METHODS:
        pred = method(image)
        assert pred.shape == image.shape and pred.dtype == np.uint8


def test_invalid_inputs(case) -> None:
    image, _, _ = case
    with pytest.raises(ValueError):
        classical.otsu_segment(image, num_classes=1)
    with pytest.raises(ValueError):
        classical.kmeans_segment(image, mode="anatomy")
    with pytest.raises(ValueError):
        classical.otsu_segment(torch.zeros(2, 4, 4, 4))  # two channels
