"""DICOMweb inputs of ``medseg segment``: the image series of a study query on a PACS.

Why: a research group's studies live in a PACS; ``medseg segment URL --bundle B --output OUT`` (or
a batch of several, on Ray) should not need someone to export them into a folder first. An input
that starts with ``http://`` or ``https://`` is a DICOMweb root with a query:

* ``http://pacs:8042/dicom-web/studies/<StudyInstanceUID>`` (optionally ``/series/<SeriesInstanceUID>``);
* ``http://pacs:8042/dicom-web?PatientID=P001&StudyDate=20240101-20241231`` (QIDO-RS filters).

A query without any filter is refused (it would fetch the whole PACS). The matching *image* series
(SEG, RTSTRUCT, SR, presentation states and other non-image series are left out) are fetched with
WADO-RS (``dicomweb-client``) into a temporary folder, one sub-folder per series named by its
SeriesInstanceUID, and segmented from there like any folder of series; the folder is removed when
the run ends. ``MEDSEG_DICOMWEB_USERNAME``/``MEDSEG_DICOMWEB_PASSWORD`` give basic-auth credentials.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from medseg.errors import InputError

__all__ = ["NON_IMAGE_MODALITIES", "fetch_series", "is_dicomweb_url", "local_inputs", "parse_query"]

NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "SR", "PR", "KO", "REG", "DOC"})
USER_ENV, PASSWORD_ENV = "MEDSEG_DICOMWEB_USERNAME", "MEDSEG_DICOMWEB_PASSWORD"
_UID_CHARS = set("0123456789.")


def is_dicomweb_url(value: Any) -> bool:
    """Whether an INPUT names a DICOMweb query rather than a file or folder."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def _uid(value: str, what: str) -> str:
    if not value or len(value) > 64 or set(value) - _UID_CHARS:
        raise InputError(f"{what} {value[:80]!r} in the DICOMweb URL is not a DICOM UID")
    return value


def parse_query(url: str) -> tuple[str, dict[str, str]]:
    """The DICOMweb root and the QIDO-RS filters a URL names.

    Raises:
        InputError: no filter at all, or a malformed UID.
    """
    parts = urllib.parse.urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    filters: dict[str, str] = {}
    if "studies" in segments:
        index = segments.index("studies")
        segments, rest = segments[:index], segments[index + 1 :]
        if rest:
            filters["StudyInstanceUID"] = _uid(rest[0], "StudyInstanceUID")
        if len(rest) >= 3 and rest[1] == "series":
            filters["SeriesInstanceUID"] = _uid(rest[2], "SeriesInstanceUID")
    for key, value in urllib.parse.parse_qsl(parts.query):
        filters[key] = value
    if not filters:
        raise InputError(
            f"{url} names no study: add /studies/<StudyInstanceUID> or a query such as ?PatientID=... "
            "(the whole PACS is not fetched)"
        )
    root = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + "/".join(segments), "", ""))
    return root.rstrip("/"), filters


def _client(root: str) -> Any:
    from dicomweb_client.api import DICOMwebClient

    session = None
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if user and password:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(user, password)
    return DICOMwebClient(url=root, session=session)


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def fetch_series(url: str, dest: str | os.PathLike, client: Any = None) -> list[Path]:
    """Fetch the image series a DICOMweb URL selects into ``dest/<SeriesInstanceUID>/``.

    Raises:
        InputError: the server cannot be reached or refuses, or no image series matches.
    """
    import requests

    root, filters = parse_query(url)
    client = client or _client(root)
    search = {k: v for k, v in filters.items() if k != "SeriesInstanceUID"}
    try:
        found = client.search_for_series(search_filters=search)
    except (requests.RequestException, OSError) as exc:
        raise InputError(f"the DICOMweb server {root} does not answer the query ({exc})") from None
    wanted = filters.get("SeriesInstanceUID")
    folders = []
    for item in found:
        study, series, modality = _value(item, "0020000D"), _value(item, "0020000E"), _value(item, "00080060")
        if (wanted and series != wanted) or modality.upper() in NON_IMAGE_MODALITIES:
            continue
        folder = Path(dest) / _uid(series, "SeriesInstanceUID")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            instances = client.retrieve_series(_uid(study, "StudyInstanceUID"), series)
        except (requests.RequestException, OSError) as exc:
            raise InputError(f"series {series} cannot be fetched from {root} ({exc})") from None
        for ds in instances:
            ds.save_as(
                folder / f"{_uid(str(ds.SOPInstanceUID), 'SOPInstanceUID')}.dcm", enforce_file_format=True
            )
        folders.append(folder)
    if not folders:
        raise InputError(f"{url} matches no image series on {root} (filters {search or filters})")
    return folders


@contextlib.contextmanager
def local_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> Iterator[Any]:
    """``inputs`` with every DICOMweb URL replaced by a temporary folder of its fetched series (named by
    its StudyInstanceUID, or ``dicomweb``), removed when the block ends."""
    several = not isinstance(inputs, (str, os.PathLike))
    items = list(inputs) if several else [inputs]
    if not any(is_dicomweb_url(i) for i in items):
        yield inputs
        return
    scratch = Path(tempfile.mkdtemp(prefix="medseg-dicomweb-"))
    try:
        local = []
        for index, item in enumerate(items):
            if not is_dicomweb_url(item):
                local.append(item)
                continue
            _, filters = parse_query(str(item))
            name = filters.get("StudyInstanceUID") or f"dicomweb-{index + 1}"
            folder = scratch / name
            fetch_series(str(item), folder)
            local.append(folder)
        yield local if several else local[0]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
