"""medseg.background: a call in a forked child, its result or its error back in the caller."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medseg import background
from medseg.errors import GeometryError, MedsegError


def _sum_of(array: np.ndarray) -> int:
    return int(array.sum())


def _refuse(message: str) -> None:
    raise GeometryError(message)


def _die() -> None:
    os._exit(3)


def _pid() -> int:
    return os.getpid()


@pytest.mark.skipif(not background.fork_available(), reason="fork-based, Linux only")
def test_child_sees_the_data_and_returns_its_result() -> None:
    array = np.arange(1000, dtype=np.int64)
    job = background.start(_sum_of, array)
    assert job.forked
    assert job.result() == int(array.sum())
    assert background.start(_pid).result() != os.getpid()


@pytest.mark.skipif(not background.fork_available(), reason="fork-based, Linux only")
def test_child_errors_and_deaths_reach_the_caller() -> None:
    with pytest.raises(GeometryError, match="tilted"):
        background.start(_refuse, "tilted").result()
    with pytest.raises(MedsegError, match="_die ended without an answer .exit code 3"):
        background.start(_die).result()


def test_without_fork_the_call_runs_here_when_asked() -> None:
    job = background.start(_pid, fork=False)
    assert not job.forked
    assert job.result() == os.getpid()
    job.cancel()  # nothing to stop
