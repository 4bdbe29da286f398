"""Binding the server's port (:mod:`medseg.serve.launcher`): free again at once after a crash (its
connections in TIME_WAIT), and IPv6 loopback given as ``::1`` or ``[::1]``."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

from medseg.serve.launcher import LabelServer, free_port, port_is_free
from medseg.serve.workdir import PreparedWorkdir


def _time_wait_port() -> int:
    """A port whose listener is gone and whose server side closed a connection first (TIME_WAIT),
    as after a server killed with connections open."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    time.sleep(0.1)
    client.close()
    listener.close()
    return port


def test_a_port_in_time_wait_counts_as_free_as_uvicorn_binds_it():
    port = _time_wait_port()
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # what the old check did
    with contextlib.closing(plain), pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))
    assert port_is_free(port)


def test_a_listening_port_is_not_free():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    with contextlib.closing(listener):
        assert not port_is_free(listener.getsockname()[1])


def test_ipv6_loopback_in_either_spelling(tmp_path: Path):
    if not socket.has_ipv6:
        pytest.fail("this Python has no IPv6")
    try:
        port = free_port("::1")
    except OSError as exc:  # a machine whose loopback has no IPv6 address: say so
        pytest.skip(f"no IPv6 loopback here ({exc})")
    assert port_is_free(port, "[::1]") and port_is_free(port, "::1")
    prepared = PreparedWorkdir(root=tmp_path, app_dir=tmp_path / "app", studies=str(tmp_path), bundles=[])
    server = LabelServer("python", prepared, port=port, host="[::1]")
    assert server.url == f"http://[::1]:{port}"
    assert server.command()[server.command().index("--host") + 1] == "::1"
