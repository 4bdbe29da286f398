"""A plain pynetdicom peer for the DICOM node's tests: the PACS' sending and receiving sides.

``Peer`` is a storage SCP that records the SEG and RTSTRUCT objects a node sends it; ``send``
C-STOREs files to a node as a calling AE; ``free_port`` finds a port on loopback.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom

__all__ = ["SEG_CLASS", "RTSTRUCT_CLASS", "Peer", "free_port", "scu", "send"]

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer:
    """A storage SCP on 127.0.0.1 recording every result the node sends (the PACS' receiving side)."""

    def __init__(self, ae_title: str = "PACS") -> None:
        from pynetdicom import AE, evt

        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title=ae_title)
        ae.add_supported_context(SEG_CLASS)
        ae.add_supported_context(RTSTRUCT_CLASS)
        self.port = free_port()
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000


def scu(ae_title: str = "TESTPACS"):
    """An AE that can request storage of the common image classes and verification."""
    from pynetdicom import AE, StoragePresentationContexts, VerificationPresentationContexts

    ae = AE(ae_title=ae_title)
    ae.requested_contexts = list(StoragePresentationContexts[:120]) + list(VerificationPresentationContexts)
    return ae


def send(port: int, files: list[Path], ae_title: str = "TESTPACS", called: str = "MEDSEG") -> None:
    """C-STORE ``files`` to the node on ``port`` in one association; each must be accepted."""
    assoc = scu(ae_title).associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    for path in files:
        status = assoc.send_c_store(pydicom.dcmread(path))
        assert status.Status == 0x0000, (path, status)
    assoc.release()
