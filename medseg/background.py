"""Run a function in a forked child process while this one goes on; collect its result later.

For Python-heavy work that a thread would serialise on the GIL: writing a DICOM SEG while the
NIfTI and overlay are written (``medseg segment``), or reading a DICOM series while torch is
imported (:mod:`medseg.io.prefetch`). A forked child sees the parent's data copy-on-write
(nothing is pickled on the way in), runs on another core and sends back only its result, which
must be small or go through a file. Where ``fork`` is not safe or not available (not Linux), the
call simply runs in the caller's process when its result is asked for.

The child must not use torch: its intra-op thread pool does not survive ``fork``.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable
from typing import Any

from medseg.errors import MedsegError

__all__ = ["Pending", "fork_available", "start"]


def fork_available() -> bool:
    """Whether calls can run in a forked child here (Linux)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _child(send: Any, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
        send.send(("ok", result, time.perf_counter() - start))
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        try:
            send.send(("error", exc, time.perf_counter() - start))
        except Exception:  # an exception that cannot be pickled: send its text
            send.send(("error", MedsegError(f"{type(exc).__name__}: {exc}"), 0.0))
    finally:
        send.close()


class Pending:
    """A call started by :func:`start`; :meth:`result` waits for it and returns its value.

    Attributes:
        seconds: how long the call itself took (set once :meth:`result` returned).
        forked: whether it ran in a child process.
    """

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, fork: bool) -> None:
        self._call = (fn, args, kwargs)
        self.seconds = 0.0
        self.forked = fork and fork_available()
        self._process = None
        if self.forked:
            context = multiprocessing.get_context("fork")
            self._receive, send = context.Pipe(duplex=False)
            self._process = context.Process(target=_child, args=(send, fn, args, kwargs), daemon=True)
            self._process.start()
            send.close()

    def result(self) -> Any:
        """Wait for the call; re-raise its exception in the caller."""
        fn, args, kwargs = self._call
        if self._process is None:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds = time.perf_counter() - start
        try:
            status, value, self.seconds = self._receive.recv()
        except (EOFError, OSError):  # the child died, or the call was cancelled
            self._process.join()
            raise MedsegError(
                f"the background process running {getattr(fn, '__name__', 'a task')} ended without an answer "
                f"(exit code {self._process.exitcode}); if memory is short, try again with fewer "
                "programs running"
            ) from None
        finally:
            self._receive.close()
        self._process.join()
        if status == "error":
            raise value
        return value

    def cancel(self) -> None:
        """Stop the child, if any (used when the parent fails before asking for the result)."""
        if self._process is None:
            return
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._receive.close()


def start(fn: Callable[..., Any], *args: Any, fork: bool = True, **kwargs: Any) -> Pending:
    """Start ``fn(*args, **kwargs)`` in a forked child when possible (see the module docstring).

    Args:
        fn: a function that does not use torch.
        fork: False runs it in this process when :meth:`Pending.result` is called.
    """
    return Pending(fn, args, kwargs, fork)
