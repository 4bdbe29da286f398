"""What every request to ``medseg serve`` passes before any route sees it (MONAI Label venv only).

Why: MONAI Label's routes turn request values into file paths and read request bodies whole. A
route-by-route fix misses the next route, so these rules sit in front of all of them, in the ASGI
app (:func:`guard`), and answer 4xx before anything is read or written:

* **names**: path segments may not be ``.``/``..`` or hold NUL, and the raw path may not hide a
  separator or a dot segment behind percent-encoding (``%2f``, ``%5c``, ``%2e%2e``); the query values
  that name files (``image``, ``label``, ``id``, ``session_id``, ``model``) must be plain names and
  label tags (``tag``, ``label_tag``) one the server knows (:mod:`medseg.serve.names`);
* **size**: a request body may hold at most :attr:`UploadLimits.max_bytes` - refused from its
  ``Content-Length`` before a byte is read, or as soon as a streamed (chunked) body passes it;
* **scratch space**: :func:`request_folder` gives a route a private folder under
  ``WORKDIR/uploads`` for one request's files and removes it on every outcome (success, refusal,
  error, client gone); :func:`clean_scratch` removes what a crash left there at start-up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medseg.serve.limits import UploadLimits
from medseg.serve.names import NameRefused, label_tag, plain_name

__all__ = [
    "NAME_PARAMS",
    "TAG_PARAMS",
    "WORKDIR_ENV",
    "check_request_names",
    "clean_scratch",
    "guard",
    "request_folder",
    "scratch_root",
    "workdir",
]

logger = logging.getLogger("medseg.serve.guard")

WORKDIR_ENV = "MEDSEG_SERVE_WORKDIR"
NAME_PARAMS = {
    "image": "image id",
    "label": "label id",
    "id": "id",
    "session_id": "session id",
    "model": "model",
}
TAG_PARAMS = ("tag", "label_tag")
_ENCODED_SEPARATORS = ("%2f", "%5c", "%00")


def workdir() -> Path:
    """The server's working folder (``medseg serve`` sets it; the server also runs inside it)."""
    return Path(os.environ.get(WORKDIR_ENV) or os.getcwd()).resolve()


def scratch_root() -> Path:
    """``WORKDIR/uploads``: where requests keep their files while they are checked."""
    return workdir() / "uploads"


def clean_scratch() -> None:
    """Remove what a crashed server left in ``WORKDIR/uploads`` and the server's temporary folder."""
    for folder in (scratch_root(), Path(tempfile.gettempdir())):
        if folder.resolve() == Path("/tmp").resolve() or workdir() not in folder.resolve().parents:
            continue  # only the server's own folders inside the workdir, never the system's /tmp
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                logger.info("removed leftover %s", entry)


@contextlib.contextmanager
def request_folder(prefix: str = "request-") -> Iterator[Path]:
    """A private folder for one request's files, removed when the block ends, however it ends."""
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_request_names(path: str, raw_path: bytes | None, query: bytes) -> None:
    """The name rules of the module docstring for one request.

    Raises:
        NameRefused: 400 with what is wrong.
    """
    raw = (raw_path or path.encode()).decode("latin-1").lower()
    if any(token in raw for token in _ENCODED_SEPARATORS):
        raise NameRefused("the path holds an encoded '/', '\\' or NUL")
    for segment in (*path.split("/"), *urllib.parse.unquote(raw).split("/")):
        if segment in (".", "..") or "\x00" in segment or "\\" in segment:
            raise NameRefused("the path holds a '.' or '..' segment, a backslash or NUL")
    params = urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    for key, value in params:
        if key in NAME_PARAMS and value != "":
            plain_name(value, NAME_PARAMS[key])
        elif key in TAG_PARAMS:
            label_tag(value)


async def _send_json(send: Any, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if status == 413:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: dict[str, Any]) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


def guard(inner: Any, limits: UploadLimits | None = None) -> Any:
    """The ASGI app ``inner`` behind the name and size rules of the module docstring.

    Args:
        inner: the server's ASGI app.
        limits: upload limits; default: from the environment (``medseg serve --max-upload-mb``).
    """
    bounds = limits or UploadLimits.from_env()

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await inner(scope, receive, send)
            return
        try:
            check_request_names(scope.get("path", "/"), scope.get("raw_path"), scope.get("query_string", b""))
        except NameRefused as exc:
            logger.warning("%s %r refused: %s", scope.get("method"), scope.get("raw_path"), exc)
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _send_json(send, exc.status, str(exc))
            return
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        length = _content_length(scope)
        too_large = (
            f"the request body is larger than this server takes ({bounds.max_bytes:,} bytes; "
            "medseg serve --max-upload-mb)"
        )
        if length is not None and (length < 0 or length > bounds.max_bytes):
            await _send_json(
                send, 413 if length > 0 else 400, too_large if length > 0 else "bad Content-Length"
            )
            return
        state = {"received": 0, "over": False, "started": False}

        async def counting_receive() -> dict[str, Any]:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > bounds.max_bytes:
                    state["over"] = True  # the route sees the client leave; we answer 413
                    return {"type": "http.disconnect"}
            return message

        async def checked_send(message: dict[str, Any]) -> None:
            if state["over"]:
                if not state["started"]:
                    state["started"] = True
                    await _send_json(send, 413, too_large)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await inner(scope, counting_receive, checked_send)
        except Exception:
            if not state["over"]:
                raise
            if not state["started"]:
                state["started"] = True
                await _send_json(send, 413, too_large)
            logger.warning(
                "%s %s refused: body over %d bytes", scope.get("method"), scope.get("path"), bounds.max_bytes
            )

    return guarded
