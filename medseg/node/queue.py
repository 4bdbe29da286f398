"""The node's durable queue: one SQLite file in the workdir, the one record of what happened to a series.

A hospital node must survive a power cut or a ``kill -9`` without losing a study and without
sending a result twice. Everything the node knows lives in ``DIR/node.sqlite`` (WAL journal,
``synchronous=FULL``), written in one transaction per step, and every step is written *after* the
file it records is safely on disk and *before* the step is acknowledged to anybody:

* ``instances``: every stored instance (acknowledged to the sender only after its row commits);
* ``series``: one row per received series moving through ``receiving -> ready -> processing ->
  segmented -> sent``, or ending ``refused`` (not suitable, broken geometry, non-image objects:
  with the reason) or ``failed`` (the destination kept refusing);
* ``sent``: one row per result object (SOP Instance UID) the destination confirmed.

On start, a series left ``processing`` by a killed node goes back to ``ready`` (its outputs are
written atomically, so a half-done run left nothing); a ``segmented`` series sends only the
objects ``sent`` does not list. The only window left is a kill between the destination's
confirmation and the commit of ``sent``: then the same object (same SOP Instance UID) is sent
again, which a PACS stores once.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STATES", "SeriesRow", "NodeQueue", "DB_NAME"]

DB_NAME = "node.sqlite"
STATES = ("receiving", "ready", "processing", "segmented", "sent", "refused", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT,
    modality TEXT,
    description TEXT,
    calling_aet TEXT,
    folder TEXT NOT NULL,
    state TEXT NOT NULL,
    instances INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    reason TEXT,
    outputs TEXT,
    bundle TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT,
    path TEXT NOT NULL,
    received REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    destination TEXT NOT NULL,
    sent REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SeriesRow:
    """One series as the queue records it."""

    series_uid: str
    study_uid: str
    modality: str
    description: str
    calling_aet: str
    folder: str
    state: str
    instances: int
    first_received: float
    last_received: float
    reason: str | None
    outputs: dict[str, str]
    attempts: int
    bundle: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class NodeQueue:
    """The SQLite queue in a node's workdir; safe to use from the receiving and the working thread.

    Args:
        workdir: the node's working folder (created when missing).
    """

    def __init__(self, workdir: str | os.PathLike) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / DB_NAME
        with self._connect() as db:
            db.executescript(_SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(series)")}
            if "bundle" not in columns:  # a workdir made before routing rules
                db.execute("ALTER TABLE series ADD COLUMN bundle TEXT")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ------------------------------------------------------------------ receiving
    def add_instance(
        self,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        series_uid: str,
        study_uid: str,
        modality: str,
        description: str,
        calling_aet: str,
        path: str,
        folder: str,
    ) -> bool:
        """Record a stored instance; False when the series is already past receiving (then it is ignored).

        An instance received again (a resend) replaces its row; a new instance of a series that was
        already processed is not added to it: the series was declared complete.
        """
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT state FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
            if row is not None and row["state"] not in ("receiving",):
                return False
            if row is None:
                db.execute(
                    "INSERT INTO series (series_uid, study_uid, modality, description, calling_aet, folder,"
                    " state, first_received, last_received, updated) VALUES (?,?,?,?,?,?,'receiving',?,?,?)",
                    (series_uid, study_uid, modality, description, calling_aet, folder, now, now, now),
                )
            db.execute(
                "INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?)",
                (sop_instance_uid, series_uid, sop_class_uid, path, now),
            )
            db.execute(
                "UPDATE series SET last_received = ?, updated = ?, instances ="
                " (SELECT COUNT(*) FROM instances WHERE series_uid = ?) WHERE series_uid = ?",
                (now, now, series_uid, series_uid),
            )
        return True

    def settle(self, settle_seconds: float, series_uids: list[str] | None = None) -> list[str]:
        """Mark receiving series ready: those quiet for ``settle_seconds``, or the ones named."""
        now = time.time()
        with self._transaction() as db:
            if series_uids is None:
                rows = db.execute(
                    "SELECT series_uid FROM series WHERE state = 'receiving' AND last_received <= ?",
                    (now - settle_seconds,),
                ).fetchall()
                uids = [r["series_uid"] for r in rows]
            else:
                uids = series_uids
            for uid in uids:
                db.execute(
                    "UPDATE series SET state = 'ready', updated = ? WHERE series_uid = ? AND state = 'receiving'",
                    (now, uid),
                )
        return uids

    # ------------------------------------------------------------------ working
    def recover(self) -> int:
        """After a restart: series a killed node left ``processing`` are ``ready`` again; returns how many."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE series SET state = 'ready', updated = ? WHERE state = 'processing'", (time.time(),)
            )
            return cursor.rowcount

    def claim(self) -> SeriesRow | None:
        """The oldest ready series, now ``processing``; None when there is none."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT * FROM series WHERE state = 'ready' ORDER BY last_received LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE series SET state = 'processing', updated = ? WHERE series_uid = ?",
                (time.time(), row["series_uid"]),
            )
        return self.get(row["series_uid"])

    def set_state(
        self,
        series_uid: str,
        state: str,
        *,
        reason: str | None = None,
        outputs: dict[str, str] | None = None,
        bundle: str | None = None,
    ) -> None:
        """Move a series to ``state`` (with the reason of a refusal or failure, its outputs, or the bundle
        that segmented it)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}, got {state!r}")
        with self._transaction() as db:
            db.execute(
                "UPDATE series SET state = ?, reason = COALESCE(?, reason), outputs = COALESCE(?, outputs),"
                " bundle = COALESCE(?, bundle), updated = ? WHERE series_uid = ?",
                (
                    state,
                    reason,
                    json.dumps(outputs) if outputs is not None else None,
                    bundle,
                    time.time(),
                    series_uid,
                ),
            )

    def to_send(self) -> list[SeriesRow]:
        """Segmented series whose next send attempt is due."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT series_uid FROM series WHERE state = 'segmented' AND next_try <= ? ORDER BY updated",
                (time.time(),),
            ).fetchall()
        return [row for uid in rows if (row := self.get(uid["series_uid"])) is not None]

    def send_failed(self, series_uid: str, reason: str, retry_after: float, give_up_after: int) -> None:
        """Record a failed send: retry after ``retry_after`` seconds, or ``failed`` after too many tries."""
        with self._transaction() as db:
            db.execute(
                "UPDATE series SET attempts = attempts + 1, next_try = ?, reason = ?, updated = ?,"
                " state = CASE WHEN attempts + 1 >= ? THEN 'failed' ELSE state END WHERE series_uid = ?",
                (time.time() + retry_after, reason, time.time(), give_up_after, series_uid),
            )

    def mark_sent(self, sop_instance_uid: str, series_uid: str, kind: str, destination: str) -> None:
        """Record that the destination confirmed one result object."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO sent VALUES (?,?,?,?,?)",
                (sop_instance_uid, series_uid, kind, destination, time.time()),
            )

    def sent_uids(self, series_uid: str) -> set[str]:
        """SOP Instance UIDs of the result objects of a series the destination confirmed."""
        with self._connect() as db:
            rows = db.execute("SELECT sop_instance_uid FROM sent WHERE series_uid = ?", (series_uid,))
            return {r["sop_instance_uid"] for r in rows}

    # ------------------------------------------------------------------ reading
    def get(self, series_uid: str) -> SeriesRow | None:
        """One series, or None."""
        with self._connect() as db:
            row = db.execute("SELECT * FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return None if row is None else _row(row)

    def all(self) -> list[SeriesRow]:
        """Every series, oldest first."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM series ORDER BY first_received").fetchall()
        return [_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Series per state (every state listed, zeros included)."""
        counts = dict.fromkeys(STATES, 0)
        for row in self.all():
            counts[row.state] += 1
        return counts


def _row(row: sqlite3.Row) -> SeriesRow:
    return SeriesRow(
        series_uid=row["series_uid"],
        study_uid=row["study_uid"] or "",
        modality=row["modality"] or "",
        description=row["description"] or "",
        calling_aet=row["calling_aet"] or "",
        folder=row["folder"],
        state=row["state"],
        instances=int(row["instances"]),
        first_received=float(row["first_received"]),
        last_received=float(row["last_received"]),
        reason=row["reason"],
        outputs=json.loads(row["outputs"]) if row["outputs"] else {},
        attempts=int(row["attempts"]),
        bundle=row["bundle"] or "",
    )
