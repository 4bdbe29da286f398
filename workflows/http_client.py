"""A minimal HTTP client (standard library only) for the serve tests and workflow scripts.

medseg's core venv has no ``requests``; this is enough to talk to MONAI Label and Orthanc:
JSON bodies, multipart form uploads, and raw bodies with a content type.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = ["Response", "call", "multipart"]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def detail(self) -> str:
        """The ``detail`` message of a FastAPI error answer, or the body as text."""
        try:
            data = self.json()
        except ValueError:
            return self.body.decode(errors="replace")
        return str(data.get("detail", data)) if isinstance(data, dict) else str(data)


def multipart(
    fields: dict[str, str] | None = None, files: dict[str, tuple[str, bytes]] | None = None
) -> tuple[bytes, str]:
    """Encode form fields and files (name -> (filename, bytes)) as multipart/form-data."""
    boundary = f"medseg{uuid.uuid4().hex}"
    parts = []
    for name, value in (fields or {}).items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data) in (files or {}).items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        parts.append(head + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def call(
    method: str,
    url: str,
    *,
    json_body: Any = None,
    fields: dict[str, str] | None = None,
    files: dict[str, tuple[str, bytes]] | None = None,
    data: bytes | None = None,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Response:
    """Send one request; HTTP error statuses are returned, not raised."""
    hdrs = dict(headers or {})
    body = data
    if json_body is not None:
        body, hdrs["Content-Type"] = json.dumps(json_body).encode(), "application/json"
    elif fields is not None or files is not None:
        body, hdrs["Content-Type"] = multipart(fields, files)
    elif content_type:
        hdrs["Content-Type"] = content_type
    req = urllib.request.Request(url, data=body, method=method.upper(), headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as err:
        return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())
