"""Batch segmentation: many inputs, one result folder each, a manifest, ``--resume``, and Ray to scale.

A batch is what ``medseg segment`` makes of several inputs (a folder of several series or files,
or several INPUT arguments). Research groups run it over thousands of PACS studies, so it must
survive what a long run meets:

* **one result folder per input, all or nothing**: each input is segmented into a hidden staging
  folder beside ``OUT/<id>/`` and moved into place complete
  (:func:`medseg.io.atomic.atomic_replace_folder`); a crash leaves the old result or none;
* **a manifest**: ``OUT/manifest.jsonl`` gets one JSON line per finished input (``status`` done or
  failed, ``outputs``, ``seconds``, the bundle's version and the sha256 of its weights, the
  ``error``, which worker and which attempt); the last line of an id counts;
* **resume**: with ``resume`` an input whose last record is ``done`` with the same weights and
  whose outputs are all there is skipped (a failed one runs again);
* **one bad input never stops the batch**: its error is recorded and the others go on; the
  command's exit code is the number of failed inputs (capped at :data:`EXIT_CODE_CAP`);
* **scale-out on Ray** (``workers``): N Ray actors each load the model once and take inputs one
  at a time from this process (a local Ray started here, or an existing cluster at
  ``ray_address``). An actor that dies (its process or its node) has its input retried on
  another actor and is replaced; an input that kills ``max_attempts`` workers in a row is
  recorded as failed. Inputs and the bundle must be readable at the same paths on every node.

Every path runs :meth:`medseg.segment.Segmenter.run` on one input at a time, so a batch on Ray
writes the same label maps as one process (each worker runs the network with its own CPU threads:
``cpus_per_worker``). Without ``workers`` the batch runs in this process (no Ray import).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, MedsegError, first_line
from medseg.segment.inputs import BatchResult, InputItem

__all__ = [
    "EXIT_CODE_CAP",
    "MANIFEST",
    "BatchSettings",
    "exit_code",
    "read_manifest",
    "run_batch",
    "segment_item",
    "weights_sha256",
]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
# exit codes above this are reserved (126-165: shell and signals); 100 or more failures all exit 100
EXIT_CODE_CAP = 100


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs.

    Attributes:
        workers: None runs the inputs in this process; N runs them on N Ray actors.
        ray_address: an existing Ray cluster (``ray start --head`` prints it); None starts a local Ray.
        resume: skip inputs already done with the same weights (see :func:`read_manifest`).
        cpus_per_worker: CPUs each Ray actor reserves and gives torch as threads.
        gpus_per_worker: GPUs each Ray actor reserves (set 1 with ``device="cuda"``).
        max_attempts: how many workers may die on one input before it is recorded as failed.
        start_timeout_s: how long to wait for a replacement worker when none is left.
        progress: show a progress bar across the batch (stderr).
    """

    workers: int | None = None
    ray_address: str | None = None
    resume: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_attempts: int = 3
    start_timeout_s: float = 300.0
    progress: bool = True

    def check(self) -> None:
        """Raises ConfigError (naming the parameter) for impossible values."""
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}", param="workers")
        if self.ray_address is not None and self.workers is None:
            raise ConfigError(
                "ray_address needs workers: how many workers to start on the cluster", param="workers"
            )
        if self.cpus_per_worker <= 0:
            raise ConfigError(
                f"cpus_per_worker must be > 0, got {self.cpus_per_worker}", param="cpus_per_worker"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}", param="max_attempts")


def weights_sha256(bundle: Any) -> str:
    """sha256 of the weights a bundle runs with (an ensemble: of the ``sha256sum`` lines of its members).

    Args:
        bundle: a :class:`medseg.bundle.Bundle`.
    """
    from medseg.bundle.loader import weight_files

    def digest(path: Path) -> str:
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        return sha.hexdigest()

    files = weight_files(bundle)
    if len(files) == 1:
        return digest(files[0])
    lines = "".join(f"{digest(f)}  {f.relative_to(bundle.root)}\n" for f in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def read_manifest(output_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The last record of each input id in ``OUT/manifest.jsonl`` ({} when there is none).

    A line that is not JSON (a run killed while appending) is ignored.
    """
    path = Path(output_dir) / MANIFEST
    records: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "id" in record:
            records[str(record["id"])] = record
    return records


def _is_done(record: Mapping[str, Any] | None, output_dir: Path, sha: str) -> bool:
    """Whether a manifest record says its input is done with these weights and its outputs are there."""
    if not record or record.get("status") != "done" or record.get("weights_sha256") != sha:
        return False
    outputs = record.get("outputs") or []
    return bool(outputs) and all((output_dir / name).is_file() for name in outputs)


def _append(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line and flush it to disk (only this process writes the manifest).

    A last line cut short (a run killed while appending) is ended first, so that it stays the one
    unreadable line and the new record is whole.
    """
    with open(path, "a+b") as handle:
        cut = False
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            cut = handle.read(1) != b"\n"
        handle.write((("\n" if cut else "") + json.dumps(record, default=str) + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def segment_item(
    segmenter: Any,
    item: InputItem,
    output_dir: str | os.PathLike,
    *,
    force: bool = False,
    weights_sha: str = "",
    attempt: int = 1,
    worker: str = "",
) -> tuple[dict[str, Any], Any]:
    """Segment one input of a batch into ``OUT/<id>/`` atomically; never raises for a bad input.

    Args:
        segmenter: the :class:`medseg.segment.Segmenter` to run.
        item: the input (its ``name`` is the result folder under ``output_dir``).
        output_dir: the batch's output folder.
        force: segment even when the input does not fit the bundle.
        weights_sha: :func:`weights_sha256` of the bundle, for the record.
        attempt: which attempt this is (1 unless a worker died on the input before).
        worker: where it runs (Ray node id, or empty in this process), for the record.

    Returns:
        The manifest record, and the :class:`SegmentResult` (None when the input failed).
    """
    out = Path(output_dir)
    target = out / item.name
    start = time.perf_counter()
    result, error = None, item.error
    if error is None:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in target.parent.glob(f".{target.name}.staging.*"):  # left by a worker that was killed
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging.", dir=target.parent))
        try:
            staged = segmenter.run(item.path, staging, series_uid=item.series_uid, force=force)
            from medseg.io.atomic import atomic_replace_folder

            atomic_replace_folder(staging, target)
            files = {kind: target / path.name for kind, path in staged.files.items()}
            result = dataclasses.replace(staged, output_dir=target, files=files)
        except MedsegError as exc:
            error = str(exc)
        except Exception as exc:  # a bug or an unexpected library error: recorded, the batch goes on
            logger.debug("input %s failed:\n%s", item.name, traceback.format_exc())
            error = f"{type(exc).__name__}: {first_line(exc)}"
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    entry = _record(item, segmenter.bundle, weights_sha, result, error, time.perf_counter() - start)
    entry.update(attempt=attempt, worker=worker, pid=os.getpid())
    return entry, result


def exit_code(result: BatchResult) -> int:
    """The number of failed inputs, capped at :data:`EXIT_CODE_CAP` (0: all done)."""
    return min(len(result.failures), EXIT_CODE_CAP)


OnRecord = Callable[[dict[str, Any], dict[str, str]], None]


def run_batch(
    items: list[InputItem],
    bundle: Any,
    output_dir: str | os.PathLike,
    segmenter_options: Mapping[str, Any] | None = None,
    *,
    force: bool = False,
    settings: BatchSettings | None = None,
    segmenter: Any = None,
    flag_of: Callable[[str], str] | None = None,
    on_record: OnRecord | None = None,
) -> BatchResult:
    """Segment every input of a batch into ``OUT/<id>/``, append the manifest, go on after failures.

    Args:
        items: the inputs (:func:`medseg.segment.inputs.discover_inputs`); names are result folders.
        bundle: bundle folder or :class:`medseg.bundle.Bundle`.
        output_dir: the batch's output folder (created when missing).
        segmenter_options: keyword arguments of :class:`medseg.segment.Segmenter` (device, tta ...).
        force: segment inputs that do not fit the bundle.
        settings: workers, Ray address, resume, retries (default: in this process).
        segmenter: a ready Segmenter for the in-process run (tests, ``medseg demo``).
        flag_of: how Ray workers name a parameter in error messages (the CLI: its flag).
        on_record: called after each finished input with its manifest record and the inputs in
            flight at that moment (id -> Ray node id); a test kills a node from here.

    Returns:
        The results, the failures (id -> one line) and the skipped ids.

    Raises:
        ConfigError: invalid settings; BundleError: the bundle cannot be opened; MedsegError: no Ray
        worker could start or stay up (its reason, e.g. the bundle's config fails on the workers).
    """
    from medseg.bundle.core import Bundle, open_bundle

    settings = settings or BatchSettings()
    settings.check()
    bundle = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sha = weights_sha256(bundle)
    done = read_manifest(out) if settings.resume else {}
    result = BatchResult(single=False)
    todo = []
    for item in items:
        if _is_done(done.get(item.name), out, sha):
            result.skipped.append(item.name)
        else:
            todo.append(item)
    result.manifest = out / MANIFEST

    from tqdm import tqdm

    bar = tqdm(
        total=len(items),
        initial=len(result.skipped),
        desc="segment",
        unit="input",
        file=sys.stderr,
        disable=not settings.progress,
        dynamic_ncols=True,
    )

    def record(entry: dict[str, Any], res: Any, busy: dict[str, str]) -> None:
        _append(result.manifest, entry)
        if res is not None:
            result.results[entry["id"]] = res
        else:
            result.failures[entry["id"]] = entry["error"]
        bar.update(1)
        bar.set_postfix(failed=len(result.failures), retried=result.retried, refresh=False)
        if on_record is not None:
            on_record(entry, busy)

    try:
        for item in [i for i in todo if i.error]:  # known to be unusable (unreadable DICOM): no worker needed
            record(_record(item, bundle, sha, None, item.error, 0.0), None, {})
        todo = [i for i in todo if not i.error]
        if todo and settings.workers is None:
            _run_here(todo, bundle, out, dict(segmenter_options or {}), force, sha, segmenter, record)
        elif todo:
            _RayPool(bundle, out, dict(segmenter_options or {}), force, sha, settings, flag_of).run(
                todo, record, result
            )
    finally:
        bar.close()
    return result


def _run_here(
    items: list[InputItem],
    bundle: Any,
    out: Path,
    options: dict[str, Any],
    force: bool,
    sha: str,
    segmenter: Any,
    record: Callable[[dict[str, Any], Any, dict[str, str]], None],
) -> None:
    """The batch in this process, one input after another, with one Segmenter."""
    from medseg.segment.pipeline import Segmenter

    runner = segmenter or Segmenter(bundle, **options)
    for item in items:
        entry, res = segment_item(runner, item, out, force=force, weights_sha=sha)
        record(entry, res, {})


class _Worker:
    """A Ray actor: loads the bundle once, then segments one input per call."""

    def __init__(
        self,
        bundle_root: str,
        options: dict[str, Any],
        out: str,
        force: bool,
        sha: str,
        threads: int,
        flag_of: Callable[[str], str] | None,
    ) -> None:
        import ray
        import torch

        from medseg.segment.pipeline import Segmenter

        torch.set_num_threads(max(1, threads))
        # a Ray worker runs gRPC threads: no forked SEG writer here (parallelism is the workers)
        self.segmenter = Segmenter(bundle_root, parallel_outputs=False, **options)
        self.out, self.force, self.flag_of = out, force, flag_of
        self.sha = weights_sha256(self.segmenter.bundle)
        if self.sha != sha:
            raise ConfigError(
                f"the bundle's weights on node {ray.get_runtime_context().get_node_id()[:12]} differ "
                "from the driver's: give every node the same bundle"
            )
        self.node = ray.get_runtime_context().get_node_id()

    def ready(self) -> str:
        return self.node

    def run(self, item: InputItem, attempt: int) -> tuple[dict[str, Any], Any]:
        import contextlib

        from medseg.errors import flag_names

        names = flag_names(self.flag_of) if self.flag_of else contextlib.nullcontext()
        with names:
            return segment_item(
                self.segmenter,
                item,
                self.out,
                force=self.force,
                weights_sha=self.sha,
                attempt=attempt,
                worker=self.node,
            )


@dataclass
class _Slot:
    actor: Any
    node: str = ""
    ready: bool = False
    busy: InputItem | None = None


class _RayPool:
    """N actors fed one input at a time; dead actors are replaced and their input retried."""

    def __init__(
        self,
        bundle: Any,
        out: Path,
        options: dict[str, Any],
        force: bool,
        sha: str,
        settings: BatchSettings,
        flag_of: Callable[[str], str] | None,
    ) -> None:
        self.settings, self.bundle, self.sha = settings, bundle, sha
        self.args = (
            str(bundle.root.resolve()),
            options,
            str(out),
            force,
            sha,
            int(settings.cpus_per_worker),
            flag_of,
        )
        self.started_ray = False
        self.startup_failures: list[str] = []

    # ------------------------------------------------------------------ ray
    def _init(self) -> None:
        import ray

        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.settings.ray_address is None:  # a local Ray in this process, sized for the workers
            workers = int(self.settings.workers or 1)
            kwargs.update(
                num_cpus=max(1, int(round(workers * self.settings.cpus_per_worker))),
                num_gpus=int(round(workers * self.settings.gpus_per_worker)),
                include_dashboard=False,
                object_store_memory=128 * 2**20,  # results are small records
            )
        else:
            kwargs["address"] = self.settings.ray_address
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to Ray at {self.settings.ray_address}: {first_line(exc)}; start it with "
                "'ray start --head' or give the address it printed",
                param="ray_address",
            ) from exc
        self.started_ray = True

    def _start(self) -> _Slot:
        import ray

        actor_class = ray.remote(
            num_cpus=self.settings.cpus_per_worker, num_gpus=self.settings.gpus_per_worker, max_restarts=0
        )(_Worker)
        return _Slot(actor_class.remote(*self.args))

    # ------------------------------------------------------------------ run
    def run(self, items: list[InputItem], record: Callable[..., None], result: BatchResult) -> None:
        import ray

        self._init()
        self.slots: list[_Slot] = []
        self.waiting: dict[Any, _Slot] = {}  # ready() calls of starting actors
        self.working: dict[Any, tuple[_Slot, InputItem]] = {}  # run() calls in flight
        self.attempts: dict[str, int] = {}
        self.queue = deque(items)
        for _ in range(int(self.settings.workers or 1)):
            self._add_worker()
        replacements = 0
        idle_since = time.monotonic()
        try:
            while self.queue or self.working:
                self._feed()
                if self.working:
                    idle_since = time.monotonic()
                elif not self.waiting or time.monotonic() - idle_since > self.settings.start_timeout_s:
                    raise MedsegError(self._no_worker_message())
                finished, _ = ray.wait([*self.working, *self.waiting], num_returns=1, timeout=5.0)
                records = []
                for ref in finished:
                    if ref in self.waiting:
                        slot = self.waiting.pop(ref)
                        try:
                            slot.node, slot.ready = ray.get(ref), True
                        except ray.exceptions.RayError as exc:  # the constructor failed, or its node died
                            self.startup_failures.append(_ray_error_line(exc))
                            self._drop(slot)
                            if replacements < int(self.settings.workers or 1) * self.settings.max_attempts:
                                replacements += 1
                                self._add_worker()
                        continue
                    slot, item = self.working.pop(ref)
                    slot.busy = None
                    try:
                        records.append(ray.get(ref))
                    except ray.exceptions.RayError as exc:  # the actor, its process or its node died
                        logger.warning(
                            "worker on node %s died on %s: %s",
                            slot.node[:12],
                            item.name,
                            _ray_error_line(exc),
                        )
                        self._drop(slot)
                        self._add_worker()
                        result.retried += 1
                        if self.attempts[item.name] >= self.settings.max_attempts:
                            records.append((self._died(item), None))
                        else:
                            self.queue.appendleft(item)  # retried first, on another worker
                self._feed()  # before reporting, so that `busy` shows what runs now
                busy = {item.name: slot.node for slot, item in self.working.values()}
                for entry, res in records:
                    record(entry, res, busy)
        finally:
            for slot in self.slots:
                ray.kill(slot.actor, no_restart=True)
            if self.started_ray:
                ray.shutdown()

    def _add_worker(self) -> None:
        slot = self._start()
        self.slots.append(slot)
        self.waiting[slot.actor.ready.remote()] = slot

    def _drop(self, slot: _Slot) -> None:
        import ray

        ray.kill(slot.actor, no_restart=True)
        self.slots.remove(slot)

    def _feed(self) -> None:
        """Give the next input to every ready, idle worker."""
        for slot in self.slots:
            if slot.ready and slot.busy is None and self.queue:
                item = self.queue.popleft()
                attempt = self.attempts.get(item.name, 0) + 1
                self.attempts[item.name] = attempt
                slot.busy = item
                self.working[slot.actor.run.remote(item, attempt)] = (slot, item)

    def _died(self, item: InputItem) -> dict[str, Any]:
        """The record of an input on which ``max_attempts`` workers died."""
        attempts = self.attempts[item.name]
        error = f"the worker running it died {attempts} times (out of memory? see the Ray logs)"
        entry = _record(item, self.bundle, self.sha, None, error, None)
        entry["attempt"] = attempts
        return entry

    def _no_worker_message(self) -> str:
        """The reason no worker started: a constructor's own error line when one was seen (a worker
        that then died without a word, e.g. while the batch gave up, says less)."""
        own = [line for line in self.startup_failures if _ERROR_LINE.match(line)]
        why = (own or self.startup_failures or ["no worker became ready"])[-1]
        return f"no Ray worker could start or stay up: {why}"


def _ray_error_line(exc: BaseException) -> str:
    """The line of a Ray error that says what happened: the last ``SomeError: message`` line of its
    text (for an actor whose constructor failed, the constructor's own error), else its first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours the task names
    errors = [line.strip() for line in text.splitlines() if _ERROR_LINE.match(line.strip())]
    if errors:
        return errors[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)(\([^)]*\))?: \S")


def _record(
    item: InputItem, bundle: Any, sha: str, result: Any, error: str | None, seconds: float | None
) -> dict[str, Any]:
    """The manifest line of one finished input."""
    out_root = result.output_dir.parents[len(Path(item.name).parts) - 1] if result else None
    return {
        "id": item.name,
        "input": str(item.path),
        "series_uid": item.series_uid,
        "status": "done" if result is not None else "failed",
        "outputs": sorted(str(p.relative_to(out_root)) for p in result.files.values()) if result else [],
        "volumes_ml": result.volumes_ml if result else None,
        "seconds": None if seconds is None else round(seconds, 3),
        "bundle": bundle.name,
        "bundle_version": bundle.version,
        "weights_sha256": sha,
        "error": error,
        "attempt": 1,
        "worker": "",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
