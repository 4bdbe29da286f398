"""The one table of image formats and folder discovery (medseg.io.formats) on real data.

A studies folder is built from links to the shared data: DICOM series in folders of their own,
two series sharing one folder, a NIfTI, an NRRD and a detached NRRD header (.nhdr + data file)
written from a real image. The same ids must come out of ``discover``, of ``medseg segment``'s
batch discovery and of ``medseg serve``'s datastore mirror, and the .nhdr must load everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io import load_image
from medseg.io.formats import (
    IMAGE_SUFFIXES,
    SELF_CONTAINED_SUFFIXES,
    discover,
    file_format,
    image_format,
    image_suffix,
    nrrd_data_files,
    safe_id,
    strip_image_suffix,
)

pytestmark = pytest.mark.needs_data

CROPS = ("dicom", "hippocampus-crops")
NIFTI = ("msd-task04-hippocampus", "imagesTr", "hippocampus_001.nii.gz")
NRRD = ("nrrd", "pyradiomics", "brain1_label.nrrd")


def _link_series(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        (dest / f"{src.name}-{f.name}").symlink_to(f)


def _write_nhdr(source: Path, header: Path) -> Path:
    import SimpleITK as sitk

    header.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.ReadImage(str(source)), str(header))  # .nhdr: ITK writes header + .raw data file
    return header


@pytest.fixture(scope="module")
def studies(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("formats") / "studies"
    crops = shared_data.joinpath(*CROPS)
    _link_series(crops / "Study1", root / "patient a" / "t1")
    _link_series(crops / "Study2", root / "mixed")
    _link_series(crops / "Study3", root / "mixed")
    (root / "files").mkdir(parents=True)
    (root / "files" / "case.nii.gz").symlink_to(shared_data.joinpath(*NIFTI))
    (root / "files" / "liver.NRRD").symlink_to(shared_data.joinpath(*NRRD))
    _write_nhdr(shared_data.joinpath(*NIFTI), root / "files" / "detached.nhdr")
    (root / "files" / ".hidden.nii.gz").symlink_to(shared_data.joinpath(*NIFTI))
    (root / "files" / "notes.txt").write_text("not an image")
    return root


def test_format_table_and_name_helpers() -> None:
    assert IMAGE_SUFFIXES == (".nii.gz", ".nii", ".nrrd", ".nhdr")
    assert ".nhdr" not in SELF_CONTAINED_SUFFIXES and ".nrrd" in SELF_CONTAINED_SUFFIXES
    assert [file_format(n) for n in ("a.nii.gz", "a.NII", "b.nrrd", "c.nhdr", "d.dcm", "e")] == [
        "nifti",
        "nifti",
        "nrrd",
        "nrrd",
        None,
        None,
    ]
    assert image_suffix("Case.NII.GZ") == ".nii.gz" and image_suffix("x.json") is None
    assert strip_image_suffix("sub/Case.NII.GZ") == "sub/Case" and strip_image_suffix("x.json") == "x.json"
    assert safe_id("patient a/t1") == "patient_a_t1" and safe_id("../.") == "image"


def test_nrrd_data_file_forms(tmp_path: Path) -> None:
    listed = tmp_path / "listed.nhdr"
    listed.write_bytes(b"NRRD0004\ntype: short\ndata file: LIST\na.raw\nsub/b.raw\n")
    assert nrrd_data_files(listed) == [tmp_path / "a.raw", tmp_path / "sub" / "b.raw"]
    formatted = tmp_path / "formatted.nhdr"
    formatted.write_bytes(b"NRRD0004\ndatafile: /data/s%02d.raw 1 5 2\n")
    assert nrrd_data_files(formatted) == [Path("/data/s01.raw"), Path("/data/s03.raw"), Path("/data/s05.raw")]
    broken = tmp_path / "broken.nhdr"
    broken.write_bytes(b"NRRD0004\ndata file: s%02d.raw one\n")
    with pytest.raises(InputError, match="fix the header"):
        nrrd_data_files(broken)


def test_image_format_of_real_paths(shared_data: Path, studies: Path, tmp_path: Path) -> None:
    crops = shared_data.joinpath(*CROPS)
    assert image_format(crops / "Study1") == "dicom"
    assert image_format(crops / "Study1" / "1.dcm") == "dicom"
    assert image_format(shared_data.joinpath(*NIFTI)) == "nifti"
    assert image_format(studies / "files" / "liver.NRRD") == "nrrd"
    assert image_format(studies / "files" / "detached.nhdr") == "nrrd"
    with pytest.raises(InputError, match="convert it"):
        image_format(studies / "files" / "notes.txt")
    with pytest.raises(InputError, match="does not exist"):
        image_format(tmp_path / "missing.nii.gz")


def test_nhdr_names_its_data_file_and_loads_like_the_source(shared_data: Path, studies: Path) -> None:
    header = studies / "files" / "detached.nhdr"
    data = nrrd_data_files(header)
    assert len(data) == 1 and data[0].parent == header.parent and data[0].is_file()
    assert nrrd_data_files(shared_data.joinpath(*NRRD)) == []  # attached header
    detached, source = load_image(header), load_image(shared_data.joinpath(*NIFTI))
    assert detached.shape == source.shape
    assert np.array_equal(detached.numpy(), source.numpy())
    assert np.allclose(detached.affine.numpy(), source.affine.numpy(), atol=1e-4)


def test_discover_ids_formats_and_order(shared_data: Path, studies: Path) -> None:
    found = discover(studies)
    crops = shared_data.joinpath(*CROPS)
    uid = {s: load_image(crops / s).meta["series_uid"] for s in ("Study1", "Study2", "Study3")}
    ids = {i.id: i for i in found.images}
    assert sorted(ids) == sorted(
        [
            "patient_a_t1",
            f"mixed_{uid['Study2'].rsplit('.', 1)[-1]}",
            f"mixed_{uid['Study3'].rsplit('.', 1)[-1]}",
            "files_case",
            "files_liver",
            "files_detached",
        ]
    )
    assert [i.format for i in found.images[:3]] == ["dicom"] * 3  # series first, then files
    assert ids["patient_a_t1"].path == studies / "patient a" / "t1"
    assert ids["patient_a_t1"].series_uid == uid["Study1"]
    assert ids[f"mixed_{uid['Study2'].rsplit('.', 1)[-1]}"].path == studies  # loaded from the root
    assert (ids["files_case"].format, ids["files_case"].suffix) == ("nifti", ".nii.gz")
    assert (ids["files_liver"].format, ids["files_liver"].suffix) == ("nrrd", ".nrrd")
    nhdr = ids["files_detached"]
    assert not nhdr.self_contained and len(nhdr.files) == 2 and ids["files_case"].self_contained
    assert found.skipped == [] and found.scan_error is None


def test_discover_dedups_ids_and_honours_exclude(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "a").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "a.nii.gz").symlink_to(shared_data.joinpath(*NIFTI))
    (root / "a" / "b.nii.gz").symlink_to(shared_data.joinpath(*NIFTI))
    (root / "a_b.nrrd").symlink_to(shared_data.joinpath(*NRRD))
    (root / "out" / "segmentation.nii.gz").symlink_to(shared_data.joinpath(*NIFTI))
    found = discover(root, exclude=root / "out")
    # no DICOM: files in walk order (a folder's files before its subfolders), later duplicates renamed
    assert [(i.id, i.path.name) for i in found.images] == [
        ("a", "a.nii.gz"),
        ("a_b", "a_b.nrrd"),
        ("a_b_2", "b.nii.gz"),
    ]
    assert isinstance(found.scan_error, InputError)
    with pytest.raises(InputError, match="not a folder"):
        discover(root / "a.nii.gz")


def test_segment_batch_and_serve_datastore_use_the_same_ids(studies: Path, tmp_path: Path) -> None:
    from medseg.segment import discover_inputs
    from medseg.serve.workdir import mirror_studies

    expected = sorted(i.id for i in discover(studies).images)
    items, single = discover_inputs(studies)
    assert not single and sorted(i.name for i in items) == expected
    report = mirror_studies(studies, tmp_path / "ds")
    assert sorted(report.images) == expected and report.skipped == []
    # series and the detached header are converted, self-contained files linked
    assert sorted(report.converted) == sorted(i for i in expected if not i.startswith(("files_c", "files_l")))
    assert (tmp_path / "ds" / "files_case.nii.gz").is_symlink()
    assert (tmp_path / "ds" / "files_liver.nrrd").is_symlink()
    served = load_image(tmp_path / "ds" / "files_detached.nii.gz")
    assert np.array_equal(served.numpy(), load_image(studies / "files" / "detached.nhdr").numpy())


def test_photographs_are_in_the_table_but_not_discovered(shared_data, tmp_path):
    """PNG/JPEG are one table's rows (format "photo", JPEG lossy) yet no volume input of a folder or of serve."""
    from medseg.io.formats import PHOTO_SUFFIXES, photo_label_ending

    assert set(PHOTO_SUFFIXES) == {".png", ".jpg", ".jpeg"}
    assert not set(PHOTO_SUFFIXES) & set(IMAGE_SUFFIXES + SELF_CONTAINED_SUFFIXES)
    assert file_format("polyp.JPG") == "photo" and strip_image_suffix("a_0000.jpeg") == "a_0000"
    assert [photo_label_ending(e) for e in (".jpg", ".jpeg", ".png", ".nii.gz")] == [".png", ".png", ".png", ".nii.gz"]
    photo = next((shared_data / "kvasir-seg-dev" / "images").glob("*.jpg"))
    (tmp_path / photo.name).symlink_to(photo)
    assert image_format(tmp_path / photo.name) == "photo"
    assert discover(tmp_path).files == []
    with pytest.raises(InputError, match="photograph"):
        load_image(tmp_path / photo.name)
