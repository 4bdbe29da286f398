"""The DICOM node: receive series by C-STORE, segment each once, send its SEG and RTSTRUCT by C-STORE.

A PACS (Orthanc, dcm4chee, a modality) routes studies to the node's AE title; the node answers
C-ECHO, stores every instance under ``DIR/incoming/<study>/<series>/`` and records it in the
durable queue (:mod:`medseg.node.queue`) before it acknowledges the C-STORE. A series counts as
complete after ``settle_seconds`` without new instances (or at the release of the association that
brought it, with ``complete_at_release``). The routing rules (:mod:`medseg.node.routing`) pick
the bundle from the series' header; one worker then segments it with the existing pipeline
(:class:`medseg.segment.Segmenter`: suitability check, prediction, ``segmentation.nii.gz``,
``segmentation.dcm``, ``rtstruct.dcm``, ``report.json``, written atomically under
``DIR/results/<series>/``) and sends the SEG and the RTSTRUCT to the destination: an AE by
C-STORE, or a DICOMweb server by STOW-RS. A series no rule matches, or that the pipeline refuses
(not suitable for the bundle, broken geometry, non-image objects), is recorded as ``refused``
with the reason and sends nothing.

What is protected: ``allowed_aets`` limits which calling AE titles may associate (without it, any
AE that reaches the port may store and trigger segmentations); DICOM itself has no authentication
or encryption here, so the port belongs on the hospital network segment the PACS is on.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, MedsegError, first_line
from medseg.io.atomic import atomic_write
from medseg.node.queue import NodeQueue, SeriesRow
from medseg.node.routing import Route, choose_route, no_route_reason

__all__ = [
    "Destination",
    "DicomWebDestination",
    "NodeConfig",
    "DicomNode",
    "node_log_handler",
    "parse_destination",
    "safe_name",
]

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


@dataclass(frozen=True)
class DicomWebDestination:
    """Where results go: a DICOMweb server's root (``.../dicom-web``), stored with STOW-RS."""

    url: str

    def __str__(self) -> str:
        return self.url


def parse_destination(text: str) -> Destination | DicomWebDestination:
    """``AET@HOST:PORT`` -> :class:`Destination`; ``http(s)://HOST[:PORT]/ROOT`` -> :class:`DicomWebDestination`.

    Raises:
        ConfigError: neither form.
    """
    if text.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        parts = urlsplit(text)
        if not parts.hostname or parts.query or parts.fragment:
            raise ConfigError(
                f"destination URL must be a DICOMweb root such as http://pacs:8042/dicom-web, got {text!r}",
                param="destination",
            )
        return DicomWebDestination(text.rstrip("/"))
    aet, at, rest = text.partition("@")
    host, colon, port = rest.rpartition(":")
    if not at or not colon or not aet or not host or not port.isdigit() or len(aet) > 16:
        raise ConfigError(
            f"destination must be AET@HOST:PORT (an AE title of at most 16 characters) or a DICOMweb URL"
            f" (http://HOST:PORT/dicom-web), got {text!r}",
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
        bundle: the bundle that segments every series no route matches (None: such series are refused).
        destination: where the SEG and RTSTRUCT go (an AE, or a DICOMweb server for STOW-RS).
        port: the port the node listens on.
        ae_title: the node's own AE title.
        host: the address it listens on.
        settle_seconds: a series is complete after this long without a new instance.
        complete_at_release: a series is also complete when the association that brought it ends.
        allowed_aets: calling AE titles allowed to associate (empty: any).
        device: ``cpu`` or ``cuda``.
        force: segment series that do not suit the bundle (else they are refused).
        routes: routing rules, tried in order before ``bundle`` (:mod:`medseg.node.routing`).
    """

    workdir: Path
    bundle: Path | None
    destination: Destination | DicomWebDestination
    port: int = 11112
    ae_title: str = "MEDSEG"
    host: str = "0.0.0.0"
    settle_seconds: float = 10.0
    complete_at_release: bool = False
    allowed_aets: Sequence[str] = field(default_factory=tuple)
    device: str = "cpu"
    force: bool = False
    routes: Sequence[Route] = field(default_factory=tuple)

    def all_routes(self) -> tuple[Route, ...]:
        """The routes in the order they are tried: ``routes``, then ``bundle`` for any series."""
        fallback = () if self.bundle is None else (Route((), Path(self.bundle)),)
        return (*self.routes, *fallback)


def _storage_contexts() -> list[Any]:
    from pynetdicom import AllStoragePresentationContexts, VerificationPresentationContexts

    return list(AllStoragePresentationContexts) + list(VerificationPresentationContexts)


class DicomNode:
    """A C-STORE SCP with a durable queue, one segmentation worker and a C-STORE SCU for results.

    Args:
        config: how the node runs.
    """

    def __init__(self, config: NodeConfig) -> None:
        if not config.all_routes():
            raise ConfigError("a node needs a bundle or at least one route", param="bundle")
        self.config = config
        self.workdir = Path(config.workdir)
        self.queue = NodeQueue(self.workdir)
        self._segmenters: dict[Path, Any] = {}
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
            logger.warning(
                "instance %s arrived after its series %s was complete; ignored", sop_uid, series_uid
            )
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
    def segmenter(self, bundle: Path) -> Any:
        """The :class:`medseg.segment.Segmenter` of ``bundle``, loaded once."""
        if bundle not in self._segmenters:
            from medseg.segment import Segmenter

            # no forked SEG writer: pynetdicom's threads run in this process
            self._segmenters[bundle] = Segmenter(bundle, device=self.config.device, parallel_outputs=False)
        return self._segmenters[bundle]

    def load_bundles(self) -> None:
        """Load every routed bundle now: a broken bundle fails at start, not on the first series."""
        for route in self.config.all_routes():
            self.segmenter(route.bundle)

    def route(self, row: SeriesRow) -> Route | str:
        """The route of a received series (from its first instance's header), or why there is none."""
        import pydicom

        first = min(Path(row.folder).glob("*.dcm"), default=None)
        if first is None:
            return "no instance of this series is on disk"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(first, stop_before_pixels=True)
        routes = self.config.all_routes()
        return choose_route(routes, ds) or no_route_reason(routes, ds)

    def process(self, row: SeriesRow) -> None:
        """Route and segment one claimed series; record its outputs, or its refusal with the reason."""
        from medseg.cli.segment import quiet_libraries

        route = self.route(row)
        if isinstance(route, str):
            logger.warning("refused series %s (%s): %s", row.series_uid, row.modality, route)
            self.queue.set_state(row.series_uid, "refused", reason=route)
            return
        bundle = route.bundle.name
        out = self.workdir / "results" / safe_name(row.series_uid)
        try:
            with quiet_libraries():
                result = self.segmenter(route.bundle).run(
                    row.folder, out, series_uid=row.series_uid, force=self.config.force
                )
        except MedsegError as exc:
            reason = first_line(exc)
            logger.warning("refused series %s (%s) for %s: %s", row.series_uid, row.modality, bundle, reason)
            self.queue.set_state(row.series_uid, "refused", reason=reason, bundle=bundle)
            return
        outputs = {kind: str(path) for kind, path in result.files.items()}
        missing = [kind for kind in SENT_KINDS if kind not in outputs]
        if missing:
            reason = f"no {' and no '.join(missing)} was written for this series; nothing sent"
            self.queue.set_state(row.series_uid, "refused", reason=reason, outputs=outputs, bundle=bundle)
            return
        self.queue.set_state(row.series_uid, "segmented", outputs=outputs, bundle=bundle)
        logger.info("segmented series %s with %s (route %s) -> %s", row.series_uid, bundle, route.rule, out)

    def send(self, row: SeriesRow) -> None:
        """Send a segmented series' SEG and RTSTRUCT (those not yet confirmed) to the destination.

        Each object is recorded as sent as soon as the destination confirms it; on a failure the
        series is retried later (and ``failed`` after too many tries) with what is still unconfirmed.
        """
        import pydicom

        destination = self.config.destination
        done = self.queue.sent_uids(row.series_uid)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pending = [(kind, pydicom.dcmread(row.outputs[kind])) for kind in SENT_KINDS]
        pending = [(kind, ds) for kind, ds in pending if str(ds.SOPInstanceUID) not in done]
        if pending:
            store = _stow if isinstance(destination, DicomWebDestination) else _c_store
            failure = store(destination, self.config.ae_title, pending, self._confirmed(row))
            if failure is not None:
                self.queue.send_failed(row.series_uid, failure, _SEND_RETRY_SECONDS, _SEND_GIVE_UP)
                return
        self.queue.set_state(row.series_uid, "sent")
        logger.info("sent the SEG and RTSTRUCT of series %s to %s", row.series_uid, destination)

    def _confirmed(self, row: SeriesRow) -> Callable[[str, Any], None]:
        def confirm(kind: str, ds: Any) -> None:
            self.queue.mark_sent(str(ds.SOPInstanceUID), row.series_uid, kind, str(self.config.destination))

        return confirm

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


Pending = Sequence[tuple[str, Any]]


def _c_store(
    destination: Destination, ae_title: str, pending: Pending, confirm: Callable[[str, Any], None]
) -> str | None:
    """C-STORE each ``(kind, dataset)`` in one association; ``confirm`` each success; the failure, or None."""
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    for _, ds in pending:
        ae.add_requested_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return f"cannot associate with {destination}"
    try:
        for kind, ds in pending:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB007, 0xB006):
                return f"{destination} answered the C-STORE of the {kind} with status {code!r}"
            confirm(kind, ds)
    finally:
        assoc.release()
    return None


def _stow(
    destination: DicomWebDestination, ae_title: str, pending: Pending, confirm: Callable[[str, Any], None]
) -> str | None:
    """STOW-RS the ``(kind, dataset)`` pairs in one request (dicomweb-client); ``confirm`` each instance the
    server lists as stored; the failure, or None. ``ae_title`` is unused (DICOMweb has none)."""
    import requests
    from dicomweb_client import DICOMwebClient

    client = DICOMwebClient(destination.url)
    client.set_http_retry_params(retry=False)  # one retry policy: the queue's (_SEND_RETRY_SECONDS)
    try:
        answer = client.store_instances([ds for _, ds in pending])
    except (requests.RequestException, OSError) as exc:
        return f"STOW-RS to {destination} failed: {first_line(exc)}"
    stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])}
    for kind, ds in pending:
        if str(ds.SOPInstanceUID) in stored:
            confirm(kind, ds)
    missing = [kind for kind, ds in pending if str(ds.SOPInstanceUID) not in stored]
    if missing:
        return f"{destination} did not confirm the STOW-RS of the {' and the '.join(missing)}"
    return None


def node_log_handler(workdir: str | os.PathLike) -> logging.Handler:
    """A handler appending the node's log to ``DIR/node.log`` (refusals with their reasons)."""
    handler = logging.FileHandler(Path(workdir) / "node.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    return handler
