"""The DICOM node: receive series by C-STORE, segment each once, send its SEG and RTSTRUCT by C-STORE.

A PACS (Orthanc, dcm4chee, a modality) routes studies to the node's AE title; the node answers
C-ECHO, stores every instance under ``DIR/incoming/<study>/<series>/`` and records it in the
durable queue (:mod:`medseg.node.queue`) before it acknowledges the C-STORE. A series counts as
complete after ``settle_seconds`` without new instances (or at the release of the association that
brought it, with ``complete_at_release``). One worker then segments it with the existing pipeline
(:class:`medseg.segment.Segmenter`: suitability check, prediction, ``segmentation.nii.gz``,
``segmentation.dcm``, ``rtstruct.dcm``, ``report.json``, written atomically under
``DIR/results/<series>/``) and sends the SEG and the RTSTRUCT to the destination AE. A series the
pipeline refuses (not suitable for the bundle, broken geometry, non-image objects) is recorded as
``refused`` with the reason and sends nothing.

What is protected: ``allowed_aets`` limits which calling AE titles may associate (without it, any
AE that reaches the port may store and trigger segmentations); DICOM itself has no authentication
or encryption here, so the port belongs on the hospital network segment the PACS is on.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, MedsegError, first_line
from medseg.io.atomic import atomic_write
from medseg.node.queue import NodeQueue, SeriesRow

__all__ = ["Destination", "NodeConfig", "DicomNode", "node_log_handler", "parse_destination", "safe_name"]

logger = logging.getLogger(__name__)

# Result objects the node sends, by output kind of medseg.segment.OUTPUT_FILES.
SENT_KINDS = ("seg", "rtstruct")
_SEND_RETRY_SECONDS = 10.0
_SEND_GIVE_UP = 30


@dataclass(frozen=True)
class Destination:
    """Where results go: an AE title at a host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_destination(text: str) -> Destination:
    """``AET@HOST:PORT`` -> :class:`Destination`.

    Raises:
        ConfigError: not of that form.
    """
    aet, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not aet or not host or not port.isdigit() or len(aet) > 16:
        raise ConfigError(
            f"destination must be AET@HOST:PORT (an AE title of at most 16 characters), got {text!r}",
            param="destination",
        )
    return Destination(aet, host, int(port))


def safe_name(uid: str) -> str:
    """A UID (or any text from the network) as one safe path component."""
    cleaned = "".join(c if c.isalnum() or c in ".-" else "_" for c in str(uid))[:128].strip(".")
    return cleaned or "unknown"


@dataclass
class NodeConfig:
    """How a node runs.

    Attributes:
        workdir: the node's folder: ``node.sqlite``, ``incoming/``, ``results/``, ``node.log``.
        bundle: the bundle that segments every series.
        destination: where the SEG and RTSTRUCT go.
        port: the port the node listens on.
        ae_title: the node's own AE title.
        host: the address it listens on.
        settle_seconds: a series is complete after this long without a new instance.
        complete_at_release: a series is also complete when the association that brought it ends.
        allowed_aets: calling AE titles allowed to associate (empty: any).
        device: ``cpu`` or ``cuda``.
        force: segment series that do not suit the bundle (else they are refused).
    """

    workdir: Path
    bundle: Path
    destination: Destination
    port: int = 11112
    ae_title: str = "MEDSEG"
    host: str = "0.0.0.0"
    settle_seconds: float = 10.0
    complete_at_release: bool = False
    allowed_aets: Sequence[str] = field(default_factory=tuple)
    device: str = "cpu"
    force: bool = False


def _storage_contexts() -> list[Any]:
    from pynetdicom import AllStoragePresentationContexts, VerificationPresentationContexts

    return list(AllStoragePresentationContexts) + list(VerificationPresentationContexts)


class DicomNode:
    """A C-STORE SCP with a durable queue, one segmentation worker and a C-STORE SCU for results.

    Args:
        config: how the node runs.
        segmenter: a ready :class:`medseg.segment.Segmenter` (default: built from ``config.bundle``
            on first use).
    """

    def __init__(self, config: NodeConfig, segmenter: Any | None = None) -> None:
        self.config = config
        self.workdir = Path(config.workdir)
        self.queue = NodeQueue(self.workdir)
        self._segmenter = segmenter
        self._stop = threading.Event()
        self._server: Any = None
        self._association_series: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ receiving
    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        series_uid = str(ds.get("SeriesInstanceUID", ""))
        study_uid = str(ds.get("StudyInstanceUID", ""))
        if not sop_uid or not series_uid:
            logger.warning("refused an instance without SOP Instance or Series Instance UID")
            return 0xA900  # dataset does not match SOP class
        folder = self.workdir / "incoming" / safe_name(study_uid) / safe_name(series_uid)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{safe_name(sop_uid)}.dcm"

        def write(tmp: Path) -> None:
            ds.save_as(tmp, enforce_file_format=True)

        atomic_write(path, write)  # on disk before it is in the queue, in the queue before it is acknowledged
        accepted = self.queue.add_instance(
            sop_instance_uid=sop_uid,
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            series_uid=series_uid,
            study_uid=study_uid,
            modality=str(ds.get("Modality", "")),
            description=str(ds.get("SeriesDescription", "")),
            calling_aet=str(event.assoc.requestor.ae_title).strip(),
            path=str(path),
            folder=str(folder),
        )
        if not accepted:
            logger.warning("instance %s arrived after its series %s was complete; ignored", sop_uid, series_uid)
        with self._lock:
            self._association_series.setdefault(id(event.assoc), set()).add(series_uid)
        return 0x0000

    def _on_released(self, event: Any) -> None:
        with self._lock:
            series = sorted(self._association_series.pop(id(event.assoc), set()))
        if self.config.complete_at_release and series:
            self.queue.settle(0.0, series)

    def start_server(self) -> None:
        """Listen for associations (C-ECHO, C-STORE) in pynetdicom's threads."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.config.ae_title)
        ae.supported_contexts = _storage_contexts()
        if self.config.allowed_aets:
            ae.require_calling_aet = [str(a) for a in self.config.allowed_aets]
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_released),
        ]
        self._server = ae.start_server(
            (self.config.host, self.config.port), block=False, evt_handlers=handlers
        )
        logger.info(
            "node %s listening on %s:%d; results to %s",
            self.config.ae_title,
            self.config.host,
            self.config.port,
            self.config.destination,
        )

    # ------------------------------------------------------------------ working
    @property
    def segmenter(self) -> Any:
        if self._segmenter is None:
            from medseg.segment import Segmenter

            # no forked SEG writer: pynetdicom's threads run in this process
            self._segmenter = Segmenter(self.config.bundle, device=self.config.device, parallel_outputs=False)
        return self._segmenter

    def process(self, row: SeriesRow) -> None:
        """Segment one claimed series; record its outputs, or its refusal with the reason."""
        from medseg.cli.segment import quiet_libraries

        out = self.workdir / "results" / safe_name(row.series_uid)
        try:
            with quiet_libraries():
                result = self.segmenter.run(row.folder, out, series_uid=row.series_uid, force=self.config.force)
        except MedsegError as exc:
            reason = first_line(exc)
            logger.warning("refused series %s (%s): %s", row.series_uid, row.modality, reason)
            self.queue.set_state(row.series_uid, "refused", reason=reason)
            return
        outputs = {kind: str(path) for kind, path in result.files.items()}
        missing = [kind for kind in SENT_KINDS if kind not in outputs]
        if missing:
            reason = f"no {' and no '.join(missing)} was written for this series; nothing sent"
            self.queue.set_state(row.series_uid, "refused", reason=reason, outputs=outputs)
            return
        self.queue.set_state(row.series_uid, "segmented", outputs=outputs)
        logger.info("segmented series %s -> %s", row.series_uid, out)

    def send(self, row: SeriesRow) -> None:
        """Send a segmented series' SEG and RTSTRUCT (those not yet confirmed) to the destination."""
        import pydicom
        from pynetdicom import AE

        destination = self.config.destination
        done = self.queue.sent_uids(row.series_uid)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pending = [(kind, pydicom.dcmread(row.outputs[kind])) for kind in SENT_KINDS]
        pending = [(kind, ds) for kind, ds in pending if str(ds.SOPInstanceUID) not in done]
        if not pending:
            self.queue.set_state(row.series_uid, "sent")
            return
        ae = AE(ae_title=self.config.ae_title)
        for _, ds in pending:
            ae.add_requested_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            self.queue.send_failed(
                row.series_uid, f"cannot associate with {destination}", _SEND_RETRY_SECONDS, _SEND_GIVE_UP
            )
            return
        try:
            for kind, ds in pending:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None or code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    reason = f"{destination} answered the C-STORE of the {kind} with status {code!r}"
                    self.queue.send_failed(row.series_uid, reason, _SEND_RETRY_SECONDS, _SEND_GIVE_UP)
                    return
                self.queue.mark_sent(str(ds.SOPInstanceUID), row.series_uid, kind, str(destination))
        finally:
            assoc.release()
        self.queue.set_state(row.series_uid, "sent")
        logger.info("sent the SEG and RTSTRUCT of series %s to %s", row.series_uid, destination)

    def step(self) -> bool:
        """One round of work: settle, send what is due, segment one series; True if anything was done."""
        self.queue.settle(self.config.settle_seconds)
        worked = False
        for row in self.queue.to_send():
            self.send(row)
            worked = True
        row = self.queue.claim()
        if row is not None:
            self.process(row)
            worked = True
        return worked

    def serve_forever(self, poll_seconds: float = 0.5) -> None:
        """Recover, listen, and work until :meth:`stop` (or SIGTERM/Ctrl-C in the CLI)."""
        recovered = self.queue.recover()
        if recovered:
            logger.info("%d series interrupted by a stop are queued again", recovered)
        self.start_server()
        try:
            while not self._stop.is_set():
                if not self.step():
                    self._stop.wait(poll_seconds)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop working and listening."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def node_log_handler(workdir: str | os.PathLike) -> logging.Handler:
    """A handler appending the node's log to ``DIR/node.log`` (refusals with their reasons)."""
    handler = logging.FileHandler(Path(workdir) / "node.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler

