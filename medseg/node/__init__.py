"""``medseg node``: a DICOM node that segments what a PACS sends it and sends the results back.

* :class:`DicomNode` -- C-STORE SCP (and C-ECHO), durable SQLite queue, one worker running the
  segment pipeline, C-STORE SCU or STOW-RS client sending each series' SEG and RTSTRUCT
  (:mod:`medseg.node.service`).
* :class:`Route` -- which bundle segments a series, by rules on its header (:mod:`medseg.node.routing`).
* :class:`NodeQueue` -- the queue in the workdir, exactly-once across ``kill -9`` and restart
  (:mod:`medseg.node.queue`).
"""

from __future__ import annotations

from medseg.node.queue import STATES, NodeQueue, SeriesRow
from medseg.node.routing import Route, choose_route, parse_route
from medseg.node.service import Destination, DicomNode, DicomWebDestination, NodeConfig, parse_destination

__all__ = [
    "STATES",
    "NodeQueue",
    "SeriesRow",
    "Route",
    "choose_route",
    "parse_route",
    "Destination",
    "DicomWebDestination",
    "DicomNode",
    "NodeConfig",
    "parse_destination",
]
