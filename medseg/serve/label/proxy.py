"""medseg's DICOMweb proxy, ``/proxy/dicom/{qido|wado|stow}/...`` (the routes OHIF reads the PACS through).

Why: stock MONAI Label joins whatever follows ``/proxy/dicom/wado/`` to the PACS's URL and sends it
with the client's method and headers, so ``wado/../../tools/shutdown`` reaches Orthanc's REST API
as a shutdown, and the user's own bearer token travels to the PACS. Here the proxy stays inside
DICOMweb, and every check happens before a request leaves:

* only QIDO-RS and WADO-RS reads (``GET``/``HEAD``; the ``user`` role) and STOW-RS stores (``POST``;
  the ``annotator`` role, see :mod:`medseg.serve.label.auth`) under the configured prefixes;
* the path is DICOMweb's: it starts with ``studies``, ``series`` or ``instances`` and each segment
  is a UID, a resource name or a frame list (letters, digits, ``.``, ``,``, ``_``, ``-``); dot
  segments, encoded characters and anything else answer 400 (the access guard has already refused
  encoded slashes and dot segments in the raw path);
* only ``Accept`` (and a store's ``Content-Type``) go to the PACS, never the client's
  ``Authorization``, cookies or hop-by-hop headers; the server's own DICOMweb credentials
  (``MONAI_LABEL_DICOMWEB_USERNAME``/``PASSWORD``) are used; redirects are not followed.

:func:`target_url` holds the rules and imports neither fastapi nor monailabel.
"""

import logging
import re
import urllib.parse
from typing import Any

from medseg.serve.names import NameRefused

__all__ = ["METHODS", "RESOURCES", "make_router", "target_url"]

logger = logging.getLogger("medseg.serve.proxy")

METHODS = {"qido": ("GET", "HEAD"), "wado": ("GET", "HEAD"), "stow": ("POST",)}
RESOURCES = ("studies", "series", "instances")
_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.,_-]{0,127}")
MAX_QUERY = 4096
_FORWARDED = ("accept",)
_RETURNED = ("content-type", "content-length", "content-location", "etag", "last-modified", "warning")


def target_url(op: str, path: str, method: str, query: str, studies: str, prefixes: dict[str, str]) -> str:
    """The PACS URL a proxy request may reach, or a refusal.

    Args:
        op: ``qido``, ``wado`` or ``stow`` (the segment after ``/proxy/dicom/``).
        path: the rest of the request path (already percent-decoded by the server).
        method: the HTTP method.
        query: the raw query string (QIDO filters), passed on as it is.
        studies: the DICOMweb root (``medseg serve --studies http://.../dicom-web``).
        prefixes: ``{"qido": ..., "wado": ..., "stow": ...}`` path prefixes under the root (often empty).

    Raises:
        NameRefused: 400 for a path outside DICOMweb, 405 for a method the operation does not take,
            404 for an unknown operation.
    """
    if op not in METHODS:
        raise NameRefused(f"/proxy/dicom/{op} is not a DICOMweb service (qido, wado, stow)", status=404)
    if method not in METHODS[op]:
        raise NameRefused(f"{op} takes {' or '.join(METHODS[op])}, not {method}", status=405)
    segments = path.strip("/").split("/") if path.strip("/") else []
    if op != "stow" and (not segments or segments[0] not in RESOURCES):
        raise NameRefused(f"a {op} path starts with {', '.join(RESOURCES)}")
    if op == "stow" and segments and segments[0] != "studies":
        raise NameRefused("a stow path is empty or starts with studies")
    for segment in segments:
        if not _SEGMENT.fullmatch(segment) or ".." in segment:
            raise NameRefused(f"{segment[:40]!r} is not a DICOMweb path segment (a UID or resource name)")
    if len(query) > MAX_QUERY or any(c in query for c in "\r\n\x00#"):
        raise NameRefused("the query string is too long or holds control characters")
    if not studies.startswith(("http://", "https://")):
        raise NameRefused("this server has no DICOMweb datastore (medseg serve --studies http://...)", 404)
    root = studies.rstrip("/")
    prefix = prefixes.get(op, "").strip("/")
    if op == "qido" and segments and segments[-1] == "metadata":
        prefix = prefixes.get("wado", "").strip("/")  # some OHIF versions ask QIDO for metadata
    if prefix and not _SEGMENT.fullmatch(prefix.replace("/", "_")):
        raise NameRefused(f"the configured {op} prefix {prefix!r} is not a plain path", status=500)
    url = "/".join(p for p in (root, prefix, *segments) if p)
    if urllib.parse.urlsplit(url).netloc != urllib.parse.urlsplit(root).netloc:
        raise NameRefused("the request would leave the DICOMweb server")
    return f"{url}?{query}" if query else url


def make_router() -> Any:
    """The proxy routes (MONAI Label venv only)."""
    import httpx
    from fastapi import APIRouter, HTTPException, Request
    from fastapi.responses import Response
    from monailabel.config import settings

    router = APIRouter(prefix="/proxy/dicom", tags=["Others"])

    async def proxy(op: str, path: str, request: Request) -> Response:
        prefixes = {
            "qido": settings.MONAI_LABEL_QIDO_PREFIX or "",
            "wado": settings.MONAI_LABEL_WADO_PREFIX or "",
            "stow": settings.MONAI_LABEL_STOW_PREFIX or "",
        }
        try:
            url = target_url(
                op,
                path,
                request.method,
                request.url.query,
                settings.MONAI_LABEL_STUDIES or "",
                prefixes,
            )
        except NameRefused as exc:
            logger.warning("proxy %s %s refused: %s", request.method, request.url.path, exc)
            raise HTTPException(status_code=exc.status, detail=str(exc)) from None
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        body = None
        if op == "stow":
            headers["content-type"] = request.headers.get("content-type", "application/dicom")
            body = await request.body()
        auth = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            auth = (settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
        timeout = httpx.Timeout(
            settings.MONAI_LABEL_DICOMWEB_PROXY_TIMEOUT, read=settings.MONAI_LABEL_DICOMWEB_READ_TIMEOUT
        )
        try:
            async with httpx.AsyncClient(auth=auth, follow_redirects=False) as client:
                answer = await client.request(
                    request.method, url, headers=headers, content=body, timeout=timeout
                )
        except httpx.HTTPError as exc:
            raise HTTPException(
                status_code=502, detail=f"the DICOMweb server did not answer ({exc})"
            ) from None
        returned = {
            k: v
            for k, v in answer.headers.items()
            if k.lower() in _RETURNED and k.lower() != "content-length"
        }
        return Response(content=answer.content, status_code=answer.status_code, headers=returned)

    router.add_api_route(
        "/{op}/{path:path}",
        proxy,
        methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
        include_in_schema=False,
    )
    return router
