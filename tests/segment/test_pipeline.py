"""``medseg segment`` end to end with the shipped hippocampus bundle on the real DICOM crop series.

* each of the three hippocampus DICOM series gives a plausible hippocampus: both labels present,
  per-label volumes in the range of the MSD Task04 training labels;
* NIfTI on the input's own grid and affine; the DICOM SEG read back (highdicom and medseg) equals
  it voxel for voxel and passes dciodvfy; report without patient identifiers;
* the same series stored differently (row direction flipped, rows and columns transposed, slices
  reversed) gives the same mask in world space;
* the nearest-neighbour mapping back to the input grid equals MONAI's ``Invertd(nearest_interp=True)``;
* bad inputs fail with one line and a non-zero exit code, batches go on after a failure, an
  interrupted run leaves no output, and unsuitable inputs are refused unless ``--force``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medseg.bundle import open_bundle
from medseg.cli.main import main
from medseg.errors import DicomError
from medseg.io import load_image
from medseg.segment import (
    OUTPUT_FILES,
    Segmenter,
    UnsuitableInputError,
    check_suitability,
    read_seg,
    resample_labels_nearest,
)

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"
STUDIES = ["Study1", "Study2", "Study3"]
# Per-label volumes of the 260 MSD Task04 training labels (labelsTr, 1 mm voxels): anterior
# 1.054-2.593 mL, posterior 0.993-2.169 mL. A plausible prediction lies within 25 % of that range.
VOLUME_RANGE_ML = {"anterior hippocampus": (0.79, 3.24), "posterior hippocampus": (0.74, 2.71)}
# What the hippocampus bundle's metadata should declare (see medseg.segment.suitability).
HIPPOCAMPUS_INPUT_KEYS = {
    "plausible_extent_mm": [16, 128],
    "plausible_spacing_mm": [0.5, 2.0],
    "tta_flip_axes": [0],
}


@pytest.fixture(scope="module")
def crops(shared_data: Path) -> Path:
    return shared_data / "dicom" / "hippocampus-crops"


@pytest.fixture(scope="module")
def weights() -> Path:
    path = BUNDLE / "models" / "model.pt"
    if not path.is_file():
        pytest.fail(f"the shipped bundle has no weights at {path}")
    return path


@pytest.fixture(scope="module")
def segmenter(weights: Path) -> Segmenter:
    return Segmenter(BUNDLE)


@pytest.fixture(scope="module")
def results(segmenter: Segmenter, crops: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("segment")
    return {study: segmenter.run(crops / study, out / study) for study in STUDIES}


@pytest.fixture(scope="module")
def keyed_bundle(weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hippocampus bundle with the suitability / TTA keys in its metadata, weights linked."""
    root = tmp_path_factory.mktemp("bundle") / "hippocampus_unet3d"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    (root / "models").mkdir()
    (root / "models" / "model.pt").symlink_to(weights)
    meta_path = root / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    for key, value in HIPPOCAMPUS_INPUT_KEYS.items():
        meta["network_data_format"]["inputs"]["image"].setdefault(key, value)
    meta_path.write_text(json.dumps(meta))
    return root


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines of dciodvfy (installed with apt-get when missing; skip only if that fails)."""
    tool = shutil.which("dciodvfy")
    if tool is None and shutil.which("apt-get"):
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "dicom3tools"], capture_output=True, timeout=600, env=env
        )
        tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed and cannot be installed")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def _patient_strings(series: Path) -> list[str]:
    ds = pydicom.dcmread(next(series.glob("*.dcm")), stop_before_pixels=True)
    values = [str(ds.get(k, "") or "") for k in ("PatientName", "PatientID", "PatientBirthDate")]
    parts = [p for v in values for p in [v, *v.split("^")] if len(p) >= 4]
    assert parts, "the test series should carry a patient name or ID to look for"
    return parts


@pytest.mark.parametrize("study", STUDIES)
def test_hippocampus_series_gives_plausible_outputs(results: dict, crops: Path, study: str) -> None:
    import highdicom as hd

    result = results[study]
    out = result.output_dir
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES.values())  # no temporary leftovers
    source = load_image(crops / study)

    nifti = nib.load(out / OUTPUT_FILES["segmentation"])
    labels = np.asarray(nifti.dataobj)
    assert labels.dtype == np.uint8 and labels.shape == tuple(source.shape)
    np.testing.assert_allclose(nifti.affine, source.affine.numpy(), atol=1e-5)
    assert set(np.unique(labels)) <= {0, 1, 2}

    report = json.loads((out / OUTPUT_FILES["report"]).read_text())
    assert report["input"]["series_uid"] == source.meta["series_uid"]
    assert report["input"]["series_description"] == "HippoCrop"
    assert report["bundle"] == {
        "name": "hippocampus_unet3d",
        "version": open_bundle(BUNDLE).version,
        "task": report["bundle"]["task"],
    }
    assert report["medseg_version"] and "research use only, not for diagnosis" in report["notice"].lower()
    assert report["suitability"]["passed"] and not report["suitability"]["forced"]
    assert {
        "load",
        "check",
        "preprocess",
        "inference",
        "invert",
        "write_nifti",
        "write_seg",
        "overlay",
        "total",
    } <= set(report["timings_s"])
    for row in report["labels"]:
        assert row["voxels"] == int((labels == row["value"]).sum())
        low, high = VOLUME_RANGE_ML[row["name"]]
        assert low <= row["volume_ml"] <= high, f"{study} {row['name']}: {row['volume_ml']} mL"
    text = (out / OUTPUT_FILES["report"]).read_text()
    for value in _patient_strings(crops / study):
        assert value not in text

    # the SEG equals the NIfTI voxel for voxel, read with highdicom and with medseg
    seg = hd.seg.segread(str(out / OUTPUT_FILES["seg"]))
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=source.meta["sop_instance_uids"],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(np.asarray(frames).transpose(2, 1, 0), labels)
    volume = read_seg(out / OUTPUT_FILES["seg"], source=crops / study)
    np.testing.assert_array_equal(volume.labelmap(), labels)
    assert seg.FrameOfReferenceUID == source.meta["frame_of_reference_uid"]
    assert seg.StudyInstanceUID == source.meta["study_uid"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["anterior hippocampus", "posterior hippocampus"]
    assert dciodvfy_errors(out / OUTPUT_FILES["seg"]) == []

    png = (out / OUTPUT_FILES["overlay"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def _rewrite(series: Path, target: Path, variant: str) -> None:
    """Store the same world content differently: new UIDs, other orientation / pixel order / slice order."""
    target.mkdir(parents=True)
    files = sorted(series.glob("*.dcm"))
    series_uid = generate_uid()
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_dir, col_dir = iop[:3], iop[3:]
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        if variant == "flip_rows":  # row direction reversed: columns stored right to left
            pixels = pixels[:, ::-1]
            position = position + (ds.Columns - 1) * col_spacing * row_dir
            iop = np.concatenate([-row_dir, col_dir])
        elif variant == "transpose":  # rows and columns swapped: the slice normal flips, slices sort reversed
            pixels = pixels.T
            iop = np.concatenate([col_dir, row_dir])
            ds.Rows, ds.Columns = ds.Columns, ds.Rows
            ds.PixelSpacing = [col_spacing, row_spacing]
        else:
            raise ValueError(variant)
        ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype).tobytes()
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = len(files) - index  # reversed numbering: must not matter
        ds.save_as(target / f"slice{len(files) - index:03d}.dcm")


@pytest.mark.parametrize("variant", ["flip_rows", "transpose"])
def test_same_series_stored_differently_gives_same_world_mask(
    results: dict, segmenter: Segmenter, crops: Path, tmp_path: Path, variant: str
) -> None:
    original = load_image(crops / "Study1")
    _rewrite(crops / "Study1", tmp_path / "series", variant)
    moved = load_image(tmp_path / "series")
    assert not np.allclose(moved.affine.numpy(), original.affine.numpy())  # really stored differently
    shape = tuple(original.shape)
    # the rewrite keeps the world content: the image maps back onto the original voxel for voxel
    back = resample_labels_nearest(moved.numpy(), moved.affine.numpy(), original.affine.numpy(), shape)
    np.testing.assert_array_equal(back, original.numpy())

    result = segmenter.run(tmp_path / "series", tmp_path / "out")
    labels = np.asarray(nib.load(tmp_path / "out" / OUTPUT_FILES["segmentation"]).dataobj)
    expected = np.asarray(nib.load(results["Study1"].output_dir / OUTPUT_FILES["segmentation"]).dataobj)
    world = resample_labels_nearest(labels, moved.affine.numpy(), original.affine.numpy(), shape)
    np.testing.assert_array_equal(world, expected)
    # the SEG of the rewritten series references it as stored, and reads back onto it
    volume = read_seg(tmp_path / "out" / OUTPUT_FILES["seg"], source=tmp_path / "series")
    assert volume.referenced_series_uids == [moved.meta["series_uid"]]
    np.testing.assert_array_equal(volume.labelmap(), labels)
    assert result.report["input"]["orientation"] != "LPS"


def test_nearest_mapping_equals_monai_invertd() -> None:
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, EnsureChannelFirstd, Invertd, Orientationd, Spacingd

    from medseg.io.geometry import lps_to_ras

    rng = np.random.default_rng(0)
    shape = (37, 29, 11)
    affine = np.eye(4)
    affine[:3, :3] = np.diag([0.83, 0.79, 2.5])
    affine[:3, 3] = [10, -20, 5]
    affine = lps_to_ras(affine)  # an LPS-stored DICOM-like grid
    image = MetaTensor(rng.normal(size=shape).astype(np.float32), affine=torch.as_tensor(affine))
    pre = Compose(
        [
            EnsureChannelFirstd("image", channel_dim="no_channel"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=(1.3, 0.9, 2.1), mode="bilinear"),
        ]
    )
    prepared = pre({"image": image})["image"]
    grid = prepared.shape[1:]
    blocks = rng.integers(0, 3, size=(grid[0] // 3 + 1, grid[1] // 3 + 1, grid[2] // 2 + 1))
    labels = np.kron(blocks, np.ones((3, 3, 2)))[: grid[0], : grid[1], : grid[2]].astype(np.uint8)
    pred = MetaTensor(
        torch.as_tensor(labels, dtype=torch.float32)[None], affine=prepared.affine, meta=prepared.meta
    )
    pred.applied_operations = prepared.applied_operations
    inverted = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True)(
        {"pred": pred, "image": prepared}
    )
    monai_result = inverted["pred"][0].numpy().round().astype(np.uint8)
    ours = resample_labels_nearest(labels, prepared.affine.numpy(), affine, shape)
    np.testing.assert_array_equal(ours, monai_result)


def test_nearest_mapping_oblique_path_agrees_with_axis_aligned_path() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=(13, 17, 9)).astype(np.uint8)
    src = np.diag([1.5, 0.7, 2.0, 1.0])
    src[:3, 3] = [3.0, -2.0, 1.0]
    dst = np.zeros((4, 4))
    dst[:3, :3] = [[0, -0.6, 0], [1.1, 0, 0], [0, 0, 0.9]]  # permuted and flipped axes
    dst[:3, 3] = [12.0, -1.5, 0.5]
    dst[3, 3] = 1
    shape = (11, 20, 21)
    aligned = resample_labels_nearest(labels, src, dst, shape)
    tilted = dst.copy()
    tilted[0, 2] = 1e-7  # not axis-aligned any more: the chunked path, same result
    oblique = resample_labels_nearest(labels, src, tilted, shape, chunk_voxels=300)
    np.testing.assert_array_equal(aligned, oblique)
    assert aligned.any() and (aligned == 0).any()  # partly outside the source


def test_nearest_mapping_rounds_ties_to_even_on_oblique_grids() -> None:
    """An in-plane rotated input under a 2 mm network grid: slice centres fall on half voxels.

    Ties round half to even (as ``grid_sample`` does), which ``scipy.ndimage.affine_transform``
    (half up) would not: this is why the oblique path keeps its own look-up.
    """
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=(20, 20, 20)).astype(np.uint8)
    src = np.diag([2.0, 2.0, 2.0, 1.0])
    angle = 0.3
    dst = np.eye(4)
    dst[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    dst[:3, 3] = [3.0, 3.0, 1.0]
    shape = (30, 30, 30)
    got = resample_labels_nearest(labels, src, dst, shape)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    mapping = np.linalg.solve(src, dst)
    source = np.rint(idx @ mapping[:3, :3].T + mapping[:3, 3]).astype(int)
    inside = np.all((source >= 0) & (source < labels.shape), axis=1)
    expected = np.zeros(len(idx), dtype=labels.dtype)
    expected[inside] = labels[tuple(source[inside].T)]
    np.testing.assert_array_equal(got, expected.reshape(shape))


def _cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _link_series(source: Path, target: Path, skip: int | None = None) -> Path:
    target.mkdir(parents=True)
    for index, path in enumerate(sorted(source.glob("*.dcm"), key=lambda p: int(p.stem))):
        if index != skip:
            (target / path.name).symlink_to(path)
    return target


def test_cli_batch_goes_on_after_a_failure(
    weights: Path, crops: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture, caplog
) -> None:
    batch = tmp_path / "in"
    _link_series(crops / "Study1", batch / "good")
    _link_series(crops / "Study2", batch / "broken", skip=10)  # a missing slice
    msd = sorted((shared_data / "msd-task04-hippocampus" / "imagesTr").glob("*.nii.gz"))[0]
    (batch / "case.nii.gz").symlink_to(msd)
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        code, stdout, stderr = _cli(
            ["segment", str(batch), "--bundle", str(BUNDLE), "--output", str(out), "--no-progress"], capsys
        )
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["case", "good", "manifest.jsonl"]
    assert sorted(p.name for p in (out / "good").iterdir()) == sorted(OUTPUT_FILES.values())
    assert sorted(p.name for p in (out / "case").iterdir()) == [
        "overlay.png",
        "report.json",
        "segmentation.nii.gz",
    ]
    assert "segmented 2 of 3 inputs" in stdout
    assert "broken:" in stderr and "missing slice" in stderr
    for value in _patient_strings(crops / "Study1"):
        assert value not in stdout + stderr + caplog.text


def _error(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code, _, err = _cli(args, capsys)
    return code, err


def _one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("medseg segment: error:"), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_bad_inputs_fail_with_one_line(
    weights: Path, crops: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base = ["--bundle", str(BUNDLE), "--output", str(tmp_path / "out")]
    (tmp_path / "empty").mkdir()
    _one_line_error(*_error(["segment", str(tmp_path / "empty"), *base], capsys), "is empty")

    missing = _link_series(crops / "Study3", tmp_path / "missing", skip=20)
    _one_line_error(*_error(["segment", str(missing), *base], capsys), "missing slice")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for path in sorted((crops / "Study3").glob("*.dcm")):
        shutil.copy(path, corrupt / path.name)
    victim = corrupt / "7.dcm"
    victim.write_bytes(victim.read_bytes()[: os.path.getsize(victim) // 2])
    _one_line_error(*_error(["segment", str(corrupt), *base], capsys), "corrupt", "7.dcm")

    _one_line_error(*_error(["segment", str(tmp_path / "nope"), *base], capsys), "does not exist")
    code, _, err = _cli(
        ["segment", str(crops / "Study1"), "--bundle", str(tmp_path), "--output", str(tmp_path / "o")], capsys
    )
    _one_line_error(code, err, "not a MONAI bundle")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_cli_refuses_ct_unless_forced(
    weights: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ct = shared_data / "dicom" / "ct-liver-seg" / "23x38x3" / "image"
    out = tmp_path / "out"
    code, _, err = _cli(["segment", str(ct), "--bundle", str(BUNDLE), "--output", str(out)], capsys)
    _one_line_error(code, err, "modality is CT", "--force")
    assert not out.exists()
    code, stdout, _ = _cli(
        ["segment", str(ct), "--bundle", str(BUNDLE), "--output", str(out), "--force"], capsys
    )
    assert code == 0, stdout
    report = json.loads((out / OUTPUT_FILES["report"]).read_text())
    assert report["suitability"]["forced"] and not report["suitability"]["passed"]
    failed = [c["name"] for c in report["suitability"]["checks"] if not c["passed"]]
    assert "modality" in failed
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES.values())


def test_whole_head_mr_is_unsuitable(keyed_bundle: Path, shared_data: Path) -> None:
    meta = json.loads((keyed_bundle / "configs" / "metadata.json").read_text())
    input_format = meta["network_data_format"]["inputs"]["image"]
    head = load_image(shared_data / "dicom" / "brain-mr" / "study1-t1post")
    with pytest.raises(UnsuitableInputError, match="extent_mm") as info:
        check_suitability(head, input_format)
    assert "spacing_mm" in str(info.value) and "force=True" in str(info.value)
    forced = check_suitability(head, input_format, force=True)
    assert forced.forced and not forced.passed
    crop = load_image(shared_data / "dicom" / "hippocampus-crops" / "Study2")
    assert check_suitability(crop, input_format).passed
    with pytest.raises(UnsuitableInputError, match="cannot be overridden"):
        check_suitability(crop[:, :, 0], input_format, force=True)  # a 2-D slice for a 3-D network


def test_tta_over_declared_flips(keyed_bundle: Path, crops: Path, tmp_path: Path) -> None:
    # the shipped plan mirrors no axis (the crops' orientation is unknown); declare one here
    flipped = tmp_path / "bundle"
    shutil.copytree(keyed_bundle, flipped, symlinks=True)
    meta_path = flipped / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["network_data_format"]["inputs"]["image"]["tta_flip_axes"] = [0]
    meta_path.write_text(json.dumps(meta))
    segmenter = Segmenter(flipped, tta=True)
    assert segmenter.flip_axes == [0]
    result = segmenter.run(crops / "Study2", tmp_path)
    assert result.report["settings"]["tta"] and result.report["settings"]["tta_flip_axes"] == [0]
    for name, volume in result.volumes_ml.items():
        low, high = VOLUME_RANGE_ML[name]
        assert low <= volume <= high, f"{name}: {volume} mL"


@pytest.mark.parametrize(
    ("module", "writer", "error"),
    [
        # a writer in this process (the overlay) and one in the forked child (the DICOM SEG)
        ("medseg.segment.overlay", "render_overlay", RuntimeError("disk full")),
        ("medseg.segment.outputs", "write_seg", DicomError("cannot reference this series")),
    ],
)
def test_failed_writer_leaves_no_output_and_its_error_reaches_the_caller(
    segmenter: Segmenter, crops: Path, tmp_path: Path, monkeypatch, module: str, writer: str, error: Exception
) -> None:
    import importlib

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(importlib.import_module(module), writer, broken)
    out = tmp_path / "out"
    with pytest.raises(type(error), match=str(error)):
        segmenter.run(crops / "Study1", out)
    assert list(out.iterdir()) == []  # neither the outputs written before nor the staging folder


def test_series_option_picks_one_series_of_a_folder(
    weights: Path, crops: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from medseg.segment import discover_inputs

    items, single = discover_inputs(crops)
    assert not single and [i.name for i in items] == STUDIES  # a batch, one folder per series
    uid = load_image(crops / "Study2").meta["series_uid"]
    out = tmp_path / "out"
    code, stdout, _ = _cli(
        ["segment", str(crops), "--series", uid, "--bundle", str(BUNDLE), "--output", str(out)], capsys
    )
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES.values())  # straight into OUTDIR
    assert json.loads((out / "report.json").read_text())["input"]["series_uid"] == uid
    code, err = _error(
        ["segment", str(crops), "--series", "1.2.3", "--bundle", str(BUNDLE), "--output", str(out)], capsys
    )
    _one_line_error(code, err, "1.2.3")


def test_argmax_channels_equals_torch_argmax() -> None:
    import torch

    from medseg.postprocess import argmax_channels

    generator = torch.Generator().manual_seed(0)
    for channels in (1, 2, 3, 7):
        scores = torch.randint(0, 4, (channels, 9, 8, 7), generator=generator).float()  # many ties
        expected = scores.argmax(dim=0)
        result = argmax_channels(scores)
        assert result.dtype == torch.uint8
        assert torch.equal(result.long(), expected)


def test_demo_finds_the_shipped_bundle_and_the_crops(crops: Path, monkeypatch, tmp_path: Path) -> None:
    from medseg.cli.demo import find_bundle, find_demo_inputs

    monkeypatch.chdir(tmp_path)  # found beside the package, not through the cwd
    assert find_bundle() == BUNDLE
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(crops.parents[1]))
    folder, origin = find_demo_inputs(download=False)
    assert folder == crops and "DICOM" in origin
    monkeypatch.setenv("MEDSEG_DATA_DIR", str(tmp_path / "absent"))
    with pytest.raises(Exception, match="missing"):
        find_demo_inputs(download=False)


OTHER_BUNDLES = ["hippocampus_unet2d", "hippocampus_deeplab3d"]


@pytest.mark.parametrize("name", OTHER_BUNDLES)
def test_other_shipped_bundles_segment_the_crops(name: str, crops: Path, tmp_path: Path) -> None:
    """Every shipped hippocampus bundle runs through the same path (the 2-D one with a SliceInferer)."""
    bundle = REPO / "bundles" / name
    if not (bundle / "models" / "model.pt").is_file():
        pytest.skip(f"{name} has no trained weights in this checkout")
    result = Segmenter(bundle).run(crops / "Study2", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(OUTPUT_FILES.values())
    for label, volume in result.volumes_ml.items():
        low, high = VOLUME_RANGE_ML[label]
        assert low <= volume <= high, f"{name} {label}: {volume} mL"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_network_gives_the_same_output(spatial_dims: int) -> None:
    import torch

    from medseg.networks import UNet
    from medseg.networks.base import ChannelsLast

    torch.manual_seed(0)
    network = UNet(
        spatial_dims=spatial_dims, in_channels=1, out_channels=3, channels=[8, 16, 32], strides=[2, 2]
    )
    network.eval()
    x = torch.rand(2, 1, *([24] * spatial_dims))
    with torch.inference_mode():
        expected = network(x)
        wrapped = ChannelsLast(network)
        got = wrapped(x)
    assert got.is_contiguous() and not wrapped.training  # attributes reach the network
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
