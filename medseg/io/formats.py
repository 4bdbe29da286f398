"""What counts as an input image, and how a folder of them is turned into inputs with stable ids.

``medseg segment``, ``medseg serve`` (datastore mirroring and uploads) and the loaders all ask
this module, so that a format accepted in one place is accepted everywhere. The formats are:

========  ==========================  ===============================================
format    recognised by               notes
========  ==========================  ===============================================
nifti     ``.nii.gz``, ``.nii``       one self-contained file
nrrd      ``.nrrd``                   one self-contained file (attached header)
nrrd      ``.nhdr``                   detached header: the voxels are in the data
                                      file(s) it names (``data file:``)
dicom     a folder of series, or a    recognised by content (``DICM`` preamble), not
          file (``.dcm`` or none)     by name; see :mod:`medseg.io.dicom`
photo     ``.png``, ``.jpg``,         2-D photographs (endoscopy, dermatology) without
          ``.jpeg``                   geometry: images and labels (PNG only: JPEG is
                                      lossy) of 2-D datasets, and ``medseg segment``
                                      inputs of photograph bundles; never discovered
                                      in a folder nor accepted by ``medseg serve``
========  ==========================  ===============================================

Ids (:func:`discover`), one rule for every caller:

* an image file: its path relative to the root without the image suffix;
* a DICOM image series that is the only image series in its folder: that folder's path relative
  to the root (the root itself: the root's name);
* a DICOM image series that shares its folder with other series: the folder's id, ``_`` and the
  last component of its SeriesInstanceUID (a series spread over several folders: the root's name
  instead of the folder's id);
* an unreadable DICOM file: its path relative to the root;

with every run of characters outside ``A-Za-z0-9._-`` (path separators included) replaced by
``_`` and leading/trailing ``.``/``_`` removed. Should two inputs get the same id, the later
ones (in discovery order: series, files, unreadable files) get ``_2``, ``_3``, ...
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from medseg.errors import InputError

if TYPE_CHECKING:  # pydicom is imported where a folder is scanned, not for a name check
    from medseg.io.dicom import SeriesInfo

__all__ = [
    "FileFormat",
    "FILE_FORMATS",
    "IMAGE_SUFFIXES",
    "SELF_CONTAINED_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NRRD_SUFFIXES",
    "PHOTO_SUFFIXES",
    "PHOTO_LABEL_SUFFIX",
    "DICOM_SUFFIXES",
    "photo_label_ending",
    "is_photo_file",
    "file_format",
    "image_suffix",
    "strip_image_suffix",
    "image_format",
    "nrrd_data_files",
    "safe_id",
    "DiscoveredImage",
    "Discovery",
    "discover",
]


@dataclass(frozen=True)
class FileFormat:
    """One file name ending that medseg reads as an image.

    Attributes:
        suffix: lower-case ending, with its dot(s).
        format: ``"nifti"``, ``"nrrd"`` or ``"photo"``.
        self_contained: False for a detached header whose voxels are in other files (``.nhdr``):
            such a file cannot be uploaded alone nor linked alone into another folder.
        lossless: False for a format whose voxels change when written (JPEG): no label file.
    """

    suffix: str
    format: str
    self_contained: bool = True
    lossless: bool = True

    @property
    def volume(self) -> bool:
        """A medical volume format (with geometry), as opposed to a 2-D photograph."""
        return self.format != "photo"


# Longest ending first: ".nii.gz" must win over ".nii" ... (none is a suffix of another today).
FILE_FORMATS: tuple[FileFormat, ...] = (
    FileFormat(".nii.gz", "nifti"),
    FileFormat(".nii", "nifti"),
    FileFormat(".nrrd", "nrrd"),
    FileFormat(".nhdr", "nrrd", self_contained=False),
    FileFormat(".png", "photo"),
    FileFormat(".jpg", "photo", lossless=False),
    FileFormat(".jpeg", "photo", lossless=False),
)
# The volume formats: what folders are searched for and medseg serve takes.
IMAGE_SUFFIXES = tuple(f.suffix for f in FILE_FORMATS if f.volume)
SELF_CONTAINED_SUFFIXES = tuple(f.suffix for f in FILE_FORMATS if f.volume and f.self_contained)
NIFTI_SUFFIXES = tuple(f.suffix for f in FILE_FORMATS if f.format == "nifti")
NRRD_SUFFIXES = tuple(f.suffix for f in FILE_FORMATS if f.format == "nrrd")
# DICOM files are recognised by content; this ending is only a hint for readers that go by name.
DICOM_SUFFIXES = (".dcm",)
# 2-D photographs without geometry: images of 2-D datasets (medseg.data.dataset reads them) and
# inputs of photograph bundles (medseg.segment.photo), not discovered in folders.
PHOTO_SUFFIXES = tuple(f.suffix for f in FILE_FORMATS if f.format == "photo")
# Labels of a photograph dataset whose images are lossy (JPEG) are PNG files.
PHOTO_LABEL_SUFFIX = ".png"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NHDR_DATA_FILE = re.compile(r"^data ?file\s*:\s*(.*)$", re.IGNORECASE)


def _entry(name: str | os.PathLike) -> FileFormat | None:
    lower = os.fspath(name).lower()
    return next((f for f in FILE_FORMATS if lower.endswith(f.suffix)), None)


def photo_label_ending(ending: str) -> str:
    """The label file ending of a dataset whose images end in ``ending``: the same, except PNG for a
    lossy photograph format (a JPEG label would blur its class indices at the edges).

    Args:
        ending: the images' ``file_ending`` (``.nii.gz``, ``.png``, ``.jpg``).
    """
    entry = _entry(ending)
    return PHOTO_LABEL_SUFFIX if entry is not None and not entry.lossless else ending


def is_photo_file(path: str | os.PathLike) -> bool:
    """True for an existing PNG or JPEG file: a photograph input (``medseg segment`` of a photo bundle).

    Args:
        path: the input path.
    """
    return Path(path).is_file() and file_format(Path(path).name) == "photo"


def file_format(name: str | os.PathLike) -> str | None:
    """``"nifti"``, ``"nrrd"`` or ``"photo"`` from a file name's ending; None for anything else
    (DICOM included).

    Args:
        name: file name or path; nothing is read.
    """
    entry = _entry(name)
    return entry.format if entry else None


def image_suffix(name: str | os.PathLike) -> str | None:
    """The image ending of a file name, in lower case as in :data:`FILE_FORMATS` (``".nii.gz"``), or None.

    Args:
        name: file name or path; nothing is read.
    """
    entry = _entry(name)
    return entry.suffix if entry else None


def strip_image_suffix(name: str) -> str:
    """``name`` without its image ending (``"case.nii.gz"`` -> ``"case"``); other names unchanged.

    Args:
        name: file name or relative path.
    """
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def image_format(path: str | os.PathLike) -> str:
    """``"dicom"``, ``"nifti"``, ``"nrrd"`` or ``"photo"`` for an existing path; a folder is a DICOM series.

    Args:
        path: file or folder.

    Raises:
        InputError: the path does not exist or is of another format.
    """
    from medseg.io.dicom import is_dicom_file

    p = Path(path)
    if p.is_dir():
        return "dicom"
    if not p.exists():
        raise InputError(f"{p} does not exist; give a DICOM folder, a NIfTI or an NRRD file")
    kind = file_format(p.name)
    if kind is not None:
        return kind
    if is_dicom_file(p):
        return "dicom"
    raise InputError(
        f"{p} is not a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or DICOM file (no DICM preamble); "
        "convert it to one of these first"
    )


def nrrd_data_files(header: str | os.PathLike) -> list[Path]:
    """The data files a detached NRRD header (``.nhdr``) names; empty for an attached header.

    Handles the single-file form (``data file: case.raw.gz``), the ``LIST`` form (one file per
    following line) and the formatted form (``data file: slice%03d.raw 1 10 1``).

    Args:
        header: the ``.nhdr`` (or ``.nrrd``) file.

    Raises:
        InputError: the header cannot be read.
    """
    path = Path(header)
    try:
        with open(path, "rb") as fp:
            spec, listed = _data_file_field(fp)
    except OSError as exc:
        raise InputError(f"{path} cannot be read ({exc.strerror}); is it complete?") from exc
    if spec is None:
        return []
    if spec.upper().startswith("LIST"):
        names = listed
    elif "%" in spec:
        try:
            pattern, start, stop, *step = spec.split()
            names = [pattern % i for i in range(int(start), int(stop) + 1, int(step[0]) if step else 1)]
        except (ValueError, TypeError) as exc:
            raise InputError(f"{path}: cannot read its 'data file: {spec}' field; fix the header") from exc
    else:
        names = [spec]
    return [p if p.is_absolute() else path.parent / p for p in map(Path, names)]


def _data_file_field(fp: BinaryIO) -> tuple[str | None, list[str]]:
    """The value of an NRRD header's ``data file`` field and, for ``LIST``, the names after it."""
    for raw in fp:
        line = raw.decode("latin-1").rstrip("\r\n")
        if not line:  # the header ends at the first empty line: attached data follows
            break
        match = _NHDR_DATA_FILE.match(line)
        if match:
            spec = match.group(1).strip()
            listed = [n.decode("latin-1").strip() for n in fp] if spec.upper().startswith("LIST") else []
            return spec, [n for n in listed if n]
    return None, []


def safe_id(text: str, fallback: str = "image") -> str:
    """``text`` with runs of characters outside ``A-Za-z0-9._-`` as ``_``, without leading/trailing ``._``.

    Args:
        text: a relative path, folder name or UID.
        fallback: what to return when nothing is left.
    """
    return _UNSAFE.sub("_", text).strip("._") or fallback


@dataclass(frozen=True)
class DiscoveredImage:
    """One input image found by :func:`discover`.

    Attributes:
        id: stable id (see the module docstring); unique within one discovery.
        path: the file, or the folder to load the DICOM series from (its own folder when it has
            one, else the root: other folders' problems then stay out of its loading).
        format: ``"nifti"``, ``"nrrd"`` or ``"dicom"``.
        series_uid: SeriesInstanceUID of a DICOM series.
        suffix: the file's image ending, lower case (``".nii.gz"``); None for DICOM.
        files: the files that make the image: a series' files, a ``.nhdr`` and its data file(s).
        error: set for an input already known to be unusable (an unreadable DICOM file or
            ``.nhdr`` header).
    """

    id: str
    path: Path
    format: str
    series_uid: str | None = None
    suffix: str | None = None
    files: tuple[Path, ...] = ()
    error: str | None = None

    @property
    def self_contained(self) -> bool:
        """True for a single file that holds the whole image (can be linked or uploaded alone)."""
        return self.suffix in SELF_CONTAINED_SUFFIXES


@dataclass
class Discovery:
    """What :func:`discover` found under a root.

    Attributes:
        images: DICOM image series, then image files, then unreadable DICOM files (``error`` set
            for those and for unreadable ``.nhdr`` headers).
        skipped: one line per DICOM series that is no image (SEG, SR, presentation state ...).
        scan_error: why the DICOM scan of the root found nothing, when it failed (e.g. no DICOM
            file at all); the image files are still listed.
    """

    images: list[DiscoveredImage] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    scan_error: InputError | None = None

    @property
    def series(self) -> list[DiscoveredImage]:
        return [i for i in self.images if i.format == "dicom" and i.error is None]

    @property
    def files(self) -> list[DiscoveredImage]:
        return [i for i in self.images if i.format != "dicom"]


def _image_files(root: Path, exclude: Path | None) -> list[Path]:
    found = []
    skip = exclude.resolve() if exclude is not None else None
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:  # never take earlier results (an output folder inside the root) for inputs
            dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).resolve() != skip]
        dirnames.sort()
        for filename in sorted(filenames):
            entry = _entry(filename)
            if not filename.startswith(".") and entry is not None and entry.volume:
                found.append(Path(dirpath) / filename)
    return found


def _folder_id(folder: Path, root: Path) -> str:
    rel = os.path.relpath(folder, root)
    return safe_id(root.resolve().name if rel == "." else rel)


def _series_images(series: list[SeriesInfo], root: Path) -> list[DiscoveredImage]:
    """One item per DICOM image series, named by its folder (see the module docstring)."""
    folder_of: dict[str, Path | None] = {}
    for info in series:
        parents = {Path(f).parent for f in info.files}
        folder_of[info.uid] = parents.pop() if len(parents) == 1 else None
    sharing = Counter(folder_of.values())
    items = []
    for info in series:
        folder, files = folder_of[info.uid], tuple(map(Path, info.files))
        if folder is not None and sharing[folder] == 1:
            items.append(DiscoveredImage(_folder_id(folder, root), folder, "dicom", info.uid, files=files))
            continue
        prefix = _folder_id(folder, root) if folder is not None else safe_id(root.resolve().name)
        image_id = safe_id(f"{prefix}_{info.uid.rsplit('.', 1)[-1]}")
        items.append(DiscoveredImage(image_id, root, "dicom", info.uid, files=files))
    return items


def _file_image(path: Path, root: Path) -> DiscoveredImage:
    """The item of one NIfTI/NRRD file; a ``.nhdr`` lists its data files (or says why it cannot)."""
    suffix = image_suffix(path.name)
    files, error = (path,), None
    if suffix == ".nhdr":
        try:
            files = (path, *nrrd_data_files(path))
        except InputError as exc:  # reported with this input, the others still go
            error = str(exc)
    image_id = safe_id(strip_image_suffix(os.path.relpath(path, root)))
    return DiscoveredImage(
        image_id, path, file_format(path.name) or "", suffix=suffix, files=files, error=error
    )


def _unique_ids(items: list[DiscoveredImage]) -> list[DiscoveredImage]:
    """Later items whose id is taken get ``_2``, ``_3`` ... appended."""
    seen: Counter = Counter()
    unique = []
    for item in items:
        seen[item.id] += 1
        unique.append(item if seen[item.id] == 1 else replace(item, id=f"{item.id}_{seen[item.id]}"))
    return unique


def discover(root: str | os.PathLike, *, exclude: str | os.PathLike | None = None) -> Discovery:
    """Every input image under a folder, recursively: DICOM series and NIfTI/NRRD files, with stable ids.

    Args:
        root: the folder to search.
        exclude: a folder under ``root`` whose image files are no input (e.g. the output folder).

    Returns:
        The images (ids by the rule in the module docstring) and what was skipped.

    Raises:
        InputError: ``root`` is not a folder.
    """
    from medseg.io.dicom import scan_folder

    base = Path(root)
    if not base.is_dir():
        raise InputError(f"{base} is not a folder; give a folder of DICOM series or NIfTI/NRRD files")
    result = Discovery()
    found: list[DiscoveredImage] = []
    unreadable = []
    try:
        scan = scan_folder(base)
    except InputError as exc:  # e.g. no DICOM file at all: the image files still count
        result.scan_error = exc
    else:
        for s in scan.series:
            if not s.info.image:
                where = os.path.relpath(Path(s.info.files[0]).parent, base) if s.info.files else "."
                result.skipped.append(f"{where}: series {s.info.summary()} is not an image series")
        found += _series_images([s.info for s in scan.series if s.info.image], base)
        unreadable = scan.unreadable
    found += [
        _file_image(p, base) for p in _image_files(base, Path(exclude) if exclude is not None else None)
    ]
    for bad in unreadable:
        error = f"{bad.path} is a corrupt DICOM file ({bad.reason})"
        found.append(
            DiscoveredImage(
                safe_id(os.path.relpath(bad.path, base)),
                Path(bad.path),
                "dicom",
                files=(Path(bad.path),),
                error=error,
            )
        )
    result.images = _unique_ids(found)
    return result
