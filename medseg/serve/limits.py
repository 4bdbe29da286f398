"""Bounds on what a client may upload to ``medseg serve``, checked before any voxel is read.

Why: an image file says in its header how large it is, and a reader believes it. An 83-byte
``.nii.gz`` whose header claims 2048^3 voxels makes a reader allocate 8 GB; a 1 MB gzip stream can
inflate to a gigabyte. So an upload is checked in this order, each step cheap and bounded:

1. its size on the wire (:class:`UploadLimits.max_bytes`, enforced while the request streams in,
   see :mod:`medseg.serve.label.guard`);
2. its header: shape x item size against :attr:`UploadLimits.max_voxels` (NIfTI, NRRD, DICOM SEG),
   with no voxel data read; an NRRD that points at another file (``data file:``) is refused;
3. a compressed stream is inflated once, counting, and refused as soon as it yields more bytes than
   its header announced (a gzip bomb stops at that bound, not at the end of the bomb).

Only then does the normal strict reader run. Messages name the upload as the client called it.
Core venv and MONAI Label venv alike (nibabel, pydicom; no fastapi).
"""

from __future__ import annotations

import bz2
import gzip
import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import InputError

__all__ = [
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_MAX_VOXELS",
    "MAX_UPLOAD_ENV",
    "MAX_VOXELS_ENV",
    "UploadLimits",
    "UploadRefused",
    "check_volume_file",
]

MAX_UPLOAD_ENV = "MEDSEG_SERVE_MAX_UPLOAD_MB"
MAX_VOXELS_ENV = "MEDSEG_SERVE_MAX_VOXELS"
DEFAULT_MAX_UPLOAD_MB = 1024.0  # a whole-body CT as float32 NIfTI is a few hundred MB
DEFAULT_MAX_VOXELS = 512**3  # 134 M voxels: a 512x512 CT of 512 slices
_SLACK = 1 << 20  # header extensions, padding, trailing bytes a writer may leave
_CHUNK = 1 << 20
_NRRD_HEADER_MAX = 1 << 16
_NRRD_ITEMSIZE = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(
        (
            "short",
            "short int",
            "signed short",
            "signed short int",
            "int16",
            "int16_t",
            "ushort",
            "unsigned short",
            "unsigned short int",
            "uint16",
            "uint16_t",
        ),
        2,
    ),
    **dict.fromkeys(
        ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"), 4
    ),
    **dict.fromkeys(
        (
            "longlong",
            "long long",
            "long long int",
            "signed long long",
            "signed long long int",
            "int64",
            "int64_t",
            "ulonglong",
            "unsigned long long",
            "unsigned long long int",
            "uint64",
            "uint64_t",
            "double",
        ),
        8,
    ),
}


class UploadRefused(InputError):
    """An upload over a limit or with a header that cannot be believed; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 413) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may be: bytes on the wire, voxels its header may announce."""

    max_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
    max_voxels: int = DEFAULT_MAX_VOXELS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UploadLimits:
        """The limits ``medseg serve --max-upload-mb/--max-voxels`` put in the server's environment.

        Raises:
            InputError: a value that is not a positive number.
        """
        env = os.environ if environ is None else environ
        try:
            mb = float(env.get(MAX_UPLOAD_ENV) or DEFAULT_MAX_UPLOAD_MB)
            voxels = int(float(env.get(MAX_VOXELS_ENV) or DEFAULT_MAX_VOXELS))
        except ValueError:
            raise InputError(f"{MAX_UPLOAD_ENV} and {MAX_VOXELS_ENV} must be numbers") from None
        if mb <= 0 or voxels <= 0:
            raise InputError(f"{MAX_UPLOAD_ENV} and {MAX_VOXELS_ENV} must be positive")
        return cls(max_bytes=int(mb * 2**20), max_voxels=voxels)

    def check_shape(self, shape: tuple[int, ...], itemsize: int, name: str) -> int:
        """Bytes of voxel data a header announces; refuses more than :attr:`max_voxels` voxels.

        Raises:
            UploadRefused: 413 over the limit, 422 for a negative or absurd shape.
        """
        if any(int(s) < 0 for s in shape) or itemsize <= 0:
            raise UploadRefused(f"{name!r} has a header with an impossible shape {shape}", status=422)
        voxels = math.prod(int(s) for s in shape)
        if voxels > self.max_voxels:
            raise UploadRefused(
                f"{name!r} announces {'x'.join(str(int(s)) for s in shape)} = {voxels:,} voxels, more than "
                f"this server takes ({self.max_voxels:,}; medseg serve --max-voxels); crop or resample it"
            )
        return voxels * itemsize


def _inflated_size_at_most(path: Path, limit: int, name: str, opener) -> None:
    """Inflate ``path`` once, counting; refuse when it yields more than ``limit`` bytes."""
    total = 0
    try:
        with opener(path) as stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > limit:
                    raise UploadRefused(
                        f"{name!r} inflates to more than its header announces ({limit:,} bytes): refused"
                    )
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise UploadRefused(
            f"{name!r} cannot be read: it is not a complete compressed file ({exc})", status=422
        ) from None


def _check_nifti(path: Path, name: str, limits: UploadLimits) -> None:
    import nibabel as nib

    try:
        header = nib.load(str(path)).header  # reads the header only (the data stays a lazy proxy)
        shape = tuple(int(s) for s in header.get_data_shape())
        itemsize = int(header.get_data_dtype().itemsize)
        offset = int(header.get_data_offset())
    except Exception as exc:  # noqa: BLE001 - nibabel raises many kinds for a damaged header
        raise UploadRefused(
            f"{name!r} cannot be read: no NIfTI header ({type(exc).__name__}: {exc})", 422
        ) from None
    data = limits.check_shape(shape, itemsize, name)
    if str(path).lower().endswith(".gz"):
        _inflated_size_at_most(path, offset + data + _SLACK, name, gzip.open)


def _nrrd_header(path: Path, name: str) -> tuple[dict[str, str], int]:
    """The fields of an attached NRRD header (lower-case keys) and where its data starts."""
    with open(path, "rb") as fp:
        head = fp.read(_NRRD_HEADER_MAX)
    if not head.startswith(b"NRRD"):
        raise UploadRefused(f"{name!r} cannot be read: not an NRRD file (no NRRD magic)", status=422)
    end = head.find(b"\n\n")
    if end < 0:
        raise UploadRefused(f"{name!r} has no end of its NRRD header within 64 KiB", status=422)
    fields: dict[str, str] = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    return fields, end + 2


def _check_nrrd(path: Path, name: str, limits: UploadLimits) -> None:
    fields, _ = _nrrd_header(path, name)
    if "data file" in fields or "datafile" in fields:
        raise UploadRefused(
            f"{name!r} is a detached NRRD header (its voxels are in another file); upload one .nrrd file",
            status=415,
        )
    try:
        shape = tuple(int(s) for s in fields["sizes"].split())
        itemsize = _NRRD_ITEMSIZE[fields["type"].strip().lower()]
    except (KeyError, ValueError):
        raise UploadRefused(f"{name!r} has an NRRD header without usable 'sizes' and 'type'", 422) from None
    data = limits.check_shape(shape, itemsize, name)
    encoding = fields.get("encoding", "raw").strip().lower()
    if encoding in ("gzip", "gz"):
        _inflated_size_at_most(path, data + _SLACK, name, _nrrd_stream(gzip.GzipFile))
    elif encoding in ("bzip2", "bz2"):
        _inflated_size_at_most(path, data + _SLACK, name, _nrrd_stream(bz2.BZ2File))


def _nrrd_stream(kind):
    """An opener of the compressed data after an NRRD header."""

    def opener(path: Path):
        fp = open(path, "rb")  # noqa: SIM115 - closed by the stream
        _, start = _nrrd_header(path, path.name)
        fp.seek(start)
        return kind(fileobj=fp) if kind is gzip.GzipFile else kind(fp)

    return opener


def _check_dicom(path: Path, name: str, limits: UploadLimits) -> None:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        shape = (int(ds.get("NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns))
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds for a damaged file
        raise UploadRefused(f"{name!r} cannot be read as DICOM ({type(exc).__name__}: {exc})", 422) from None
    limits.check_shape(shape, max(1, bits // 8), name)


def check_volume_file(path: str | os.PathLike, name: str, limits: UploadLimits) -> None:
    """Check an uploaded NIfTI / NRRD / DICOM file against ``limits`` without reading its voxels.

    Args:
        path: the upload on the server's disk (its suffix says its type).
        name: the file name the client sent (for messages).
        limits: the server's limits.

    Raises:
        UploadRefused: 413 over a limit; 415 for a detached NRRD header; 422 for a header that cannot
            be read or a compressed stream that is broken.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise UploadRefused(
            f"{name!r} has {size:,} bytes, more than this server takes ({limits.max_bytes:,}; "
            "medseg serve --max-upload-mb)"
        )
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz")):
        _check_nifti(path, name, limits)
    elif lower.endswith(".nrrd"):
        _check_nrrd(path, name, limits)
    elif lower.endswith(".dcm"):
        _check_dicom(path, name, limits)
    else:
        raise UploadRefused(f"{name!r} is not a NIfTI, NRRD or DICOM file", status=415)
