"""The outputs ``medseg segment`` writes for DICOM input: the RT structure set beside the SEG.

For each hippocampus DICOM crop series, segmented with the shipped bundle: ``rtstruct.dcm`` passes
dciodvfy, has one ROI per label with the bundle's name, colour and code, references the series and
study, and each ROI rasterised back onto the series grid agrees with ``segmentation.nii.gz`` at
Dice >= 0.95; the report names it. ``--no-rtstruct`` writes none.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from support.dciodvfy import dciodvfy_errors

from medseg.cli.main import main
from medseg.io import load_image
from medseg.io.rtstruct import rasterise_rtstruct
from medseg.segment import OUTPUT_FILES, Segmenter

pytestmark = pytest.mark.needs_data

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "hippocampus_unet3d"
STUDIES = ["Study1", "Study2", "Study3"]


@pytest.fixture(scope="module")
def crops(shared_data: Path) -> Path:
    return shared_data / "dicom" / "hippocampus-crops"


@pytest.fixture(scope="module")
def results(crops: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("segment")
    segmenter = Segmenter(BUNDLE)
    return {study: segmenter.run(crops / study, out / study) for study in STUDIES}


@pytest.mark.parametrize("study", STUDIES)
def test_rtstruct_agrees_with_the_nifti(results: dict, crops: Path, study: str) -> None:
    result = results[study]
    path = result.files["rtstruct"]
    assert path == result.output_dir / OUTPUT_FILES["rtstruct"]
    assert dciodvfy_errors(path) == []
    source = load_image(crops / study)
    ds = pydicom.dcmread(path)
    assert ds.StudyInstanceUID == source.meta["study_uid"]
    series_ref = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    assert series_ref.RTReferencedSeriesSequence[0].SeriesInstanceUID == source.meta["series_uid"]
    report = result.report
    assert report["outputs"]["rtstruct"] == OUTPUT_FILES["rtstruct"]
    assert report["outputs"]["rtstruct_sop_instance_uid"] == ds.SOPInstanceUID
    rows = {row["name"]: row for row in report["labels"]}
    assert [r.ROIName for r in ds.StructureSetROISequence] == list(rows)
    for roi, observation, contour in zip(
        ds.StructureSetROISequence, ds.RTROIObservationsSequence, ds.ROIContourSequence, strict=True
    ):
        row = rows[roi.ROIName]
        assert list(contour.ROIDisplayColor) == row["color"]
        assert observation.RTROIIdentificationCodeSequence[0].CodeValue == row["type"][0]

    labels = np.asarray(nib.load(result.files["segmentation"]).dataobj)
    masks = rasterise_rtstruct(path, np.asarray(source.affine), labels.shape)
    for name, row in rows.items():
        expected = labels == row["value"]
        assert expected.sum() > 100, "the bundle should find both hippocampus parts"
        overlap = 2 * (masks[name] & expected).sum() / (masks[name].sum() + expected.sum())
        assert overlap >= 0.95, (name, overlap)


def test_no_rtstruct_flag(crops: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = main(
        ["segment", str(crops / "Study1"), "--bundle", str(BUNDLE), "--output", str(out), "--no-rtstruct"]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        name for kind, name in OUTPUT_FILES.items() if kind != "rtstruct"
    )
    report = json.loads((out / OUTPUT_FILES["report"]).read_text())
    assert report["outputs"]["rtstruct"] is None
