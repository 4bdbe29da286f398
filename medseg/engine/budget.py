"""Fit a training run to a wall-clock budget: ``medseg train --max-minutes M``.

A planned bundle's ``train.json`` fixes its epochs from a cost model of one machine; on another
machine, or under other load, the same epochs take a different time. nnU-Net answers with a
fixed number of steps (days on a CPU). Here the user gives the minutes instead: after a short
warm-up the handler measures the seconds per iteration (validation and checkpoints included, as
they recur), fits the number of iterations to what is left of the budget, sets the trainer's
``max_epochs`` and the learning-rate schedule's length to it, and refits at every epoch end as the
measurement firms up. The run stops at the fitted iteration (mid-epoch if need be), where a
cosine or polynomial schedule reaches its final value, and the bundle's ``COMPLETED`` handlers
keep the final (EMA) weights. Should the machine slow down, the run still stops at the budget.

The clock starts at ``start_time`` (the CLI passes the time the command started), so data
caching and network construction count against the budget. The handler is added by the CLI
through bundle overrides; a bundle run without it trains its own ``max_epochs``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ignite.engine import Engine, Events

from medseg.errors import ConfigError

__all__ = ["SCHEDULE_LENGTH_ATTRIBUTES", "TimeBudget", "format_duration"]

logger = logging.getLogger(__name__)

# weight of the newest iteration in the moving average of seconds per iteration
SMOOTHING = 0.1

# The attribute that holds the schedule's length in steps, by scheduler family: MONAI's
# WarmupCosineSchedule (``t_total``), torch's PolynomialLR / LinearLR / ConstantLR
# (``total_iters``) and CosineAnnealingLR (``T_max``). torch's chainable (recursive) forms
# telescope to their final value at the new length, and MONAI's is a closed form of the step.
SCHEDULE_LENGTH_ATTRIBUTES = ("t_total", "total_iters", "T_max")


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour) for the progress bar's ETA."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TimeBudget:
    """Stop training at a wall-clock budget with the learning-rate schedule fitted to end there.

    Attach it after the trainer's own handlers (the bundle's ``initialize`` runs after the
    trainer is built, so ``LrScheduleHandler`` has stepped before this handler looks at an
    iteration). The fitted plan is in ``planned_iterations``; ``engine.state.eta`` holds the
    time left as text for :class:`medseg.engine.ProgressBar`.

    Args:
        minutes: the budget for the whole command, from ``start_time``.
        lr_scheduler: the scheduler stepped once per iteration whose length is refitted (one with
            an attribute named in :data:`SCHEDULE_LENGTH_ATTRIBUTES`); ``None`` to fit only the
            trainer's length.
        start_time: ``time.time()`` when the budget started (default: when this handler is built).
        warmup_iterations: iterations not timed (first-call costs: allocation, oneDNN priming).
        min_measure_seconds: time the iterations after the warm-up at least this long before the
            first fit.
        reserve_seconds: kept free at the end for the final checkpoint and the ``COMPLETED``
            handlers; default 2 % of the budget, at least 3 seconds. The schedule is fitted to end
            this long before the budget; only should the machine slow down in the last moments is
            half of it spent on training (the hard stop), so jitter does not cut the schedule.
        max_epochs: never plan more epochs than this (``medseg train --epochs``); default no cap.
    """

    def __init__(
        self,
        minutes: float,
        lr_scheduler: Any = None,
        start_time: float | None = None,
        warmup_iterations: int = 3,
        min_measure_seconds: float = 3.0,
        reserve_seconds: float | None = None,
        max_epochs: int | None = None,
    ) -> None:
        if not minutes > 0:
            raise ConfigError(f"minutes must be positive, got {minutes}", param="minutes")
        if max_epochs is not None and max_epochs < 1:
            raise ConfigError(f"max_epochs must be at least 1, got {max_epochs}", param="max_epochs")
        self.minutes = float(minutes)
        self.lr_scheduler = lr_scheduler
        self.length_attribute = _length_attribute(lr_scheduler) if lr_scheduler is not None else None
        self.start_time = time.time() if start_time is None else float(start_time)
        self.deadline = self.start_time + 60.0 * self.minutes
        self.warmup_iterations = max(1, int(warmup_iterations))
        self.min_measure_seconds = float(min_measure_seconds)
        budget_s = 60.0 * self.minutes
        self.reserve_seconds = (
            max(3.0, 0.02 * budget_s) if reserve_seconds is None else float(reserve_seconds)
        )
        self.max_epochs = max_epochs
        self.planned_iterations: int | None = None
        self.stopped_at_deadline = False
        self._first_iteration = 0
        self._clock_time = 0.0  # when the timed iterations began
        self._last_completed = 0.0
        self._recent: float | None = None  # moving average of the latest iterations' seconds
        self._overhead = 0.0  # seconds spent at epoch ends (validation, checkpoints)
        self._timed = 0
        self._epoch_boundary = False

    def attach(self, engine: Engine) -> None:
        """Register the handler's events on the trainer."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    # -- events ----------------------------------------------------------------------------

    def _started(self, engine: Engine) -> None:
        self._first_iteration = engine.state.iteration  # a resumed run counts from its checkpoint
        self._last_completed = time.time()
        left = self.deadline - time.time()
        engine.state.eta = "fitting"
        logger.info(
            "time budget: %.1f min, %s left after set-up; the schedule is fitted after %d timed iterations",
            self.minutes,
            format_duration(left),
            self.warmup_iterations,
        )
        if left <= self.reserve_seconds:
            logger.warning("time budget: spent before training started (data caching); stopping at once")
            self.stopped_at_deadline = True
            engine.terminate()

    def _iteration_completed(self, engine: Engine) -> None:
        now = time.time()
        self._time_iteration(engine, now)
        planned = self.planned_iterations
        if planned is not None and engine.state.iteration >= planned:
            # the schedule has reached its final value: stop (extending it now would restart it)
            logger.info("time budget: reached the fitted %d iterations; stopping", planned)
            engine.terminate()
            return
        if self._recent is not None:
            if planned is None and now - self._clock_time >= self.min_measure_seconds:
                self._fit(engine, now)
            elif planned is not None and self._off_target(engine, now):
                self._fit(engine, now)  # the machine's speed changed: refit to end at the budget
        if now >= self.deadline - 0.5 * self.reserve_seconds:
            logger.warning(
                "time budget: the budget ran out at iteration %d before the fitted schedule ended",
                engine.state.iteration,
            )
            self.stopped_at_deadline = True
            engine.terminate()
        engine.state.eta = self._eta(engine, now)

    def _time_iteration(self, engine: Engine, now: float) -> None:
        """Split the time since the last iteration into iteration time and epoch-end overhead."""
        done = engine.state.iteration - self._first_iteration
        gap, self._last_completed = now - self._last_completed, now
        if done <= self.warmup_iterations:
            self._clock_time = now  # the warm-up iterations are not timed
            self._epoch_boundary = False
            return
        if self._epoch_boundary:  # validation, checkpoints and the next epoch's start
            self._epoch_boundary = False
            self._overhead += max(0.0, gap - (self._recent or 0.0))
        else:
            self._recent = gap if self._recent is None else (1 - SMOOTHING) * self._recent + SMOOTHING * gap
            self._timed += 1
            if self.planned_iterations is None:  # until the first fit: the plain mean
                self._recent = (now - self._clock_time - self._overhead) / self._timed

    def _epoch_completed(self, engine: Engine) -> None:
        self._epoch_boundary = True  # the next gap holds the epoch-end handlers (validation included)
        if self.planned_iterations is None and engine.state.epoch >= (engine.state.max_epochs or 0):
            engine.state.max_epochs = engine.state.epoch + 1  # not measured yet: keep training to measure

    def _completed(self, engine: Engine) -> None:
        logger.info(
            "time budget: trained %d iterations (%d epochs) in %s of %.1f min",
            engine.state.iteration,
            engine.state.epoch,
            format_duration(time.time() - self.start_time),
            self.minutes,
        )

    # -- fitting ---------------------------------------------------------------------------

    def seconds_per_iteration(self) -> float | None:
        """Seconds per iteration for the rest of the run, or ``None`` before any were timed.

        A moving average of the latest iterations (it follows a machine whose load changes) plus
        the epoch-end overhead so far (validation, checkpoints) spread over the timed iterations.
        """
        if self._recent is None:
            return None
        return self._recent + self._overhead / max(1, self._timed)

    def _off_target(self, engine: Engine, now: float) -> bool:
        """Whether the fitted schedule would end more than 5 % of the time left off its target.

        At least a quarter of the reserve (at most a second) is tolerated, so a late projection
        is refitted well before it reaches the hard stop at half the reserve.
        """
        assert self.planned_iterations is not None
        rate = self.seconds_per_iteration() or 0.0
        target = self.deadline - self.reserve_seconds
        projected = now + rate * (self.planned_iterations - engine.state.iteration)
        return abs(projected - target) > max(min(1.0, 0.25 * self.reserve_seconds), 0.05 * (target - now))

    def _fit(self, engine: Engine, now: float) -> None:
        state = engine.state
        rate = self.seconds_per_iteration()
        if rate is None:
            return
        epoch_length = int(state.epoch_length or 1)
        more = max(0, math.floor((self.deadline - self.reserve_seconds - now) / rate))
        # at least one more step: the scheduler then steps once at the new length, so it ends at
        # its final value (the step of this iteration already ran at the old length)
        total = state.iteration + max(1, more)
        if self.max_epochs is not None:
            total = max(state.iteration, min(total, self.max_epochs * epoch_length))
        if total != self.planned_iterations:
            if self.planned_iterations is None:
                logger.info(
                    "time budget: %.3f s per iteration; %d iterations (%.1f epochs of %d) fit the budget",
                    rate,
                    total,
                    total / epoch_length,
                    epoch_length,
                )
            self.planned_iterations = total
            state.max_epochs = max(state.epoch, math.ceil(total / epoch_length))
            if self.lr_scheduler is not None and self.length_attribute is not None:
                setattr(self.lr_scheduler, self.length_attribute, max(1, total))

    def _eta(self, engine: Engine, now: float) -> str:
        if self.planned_iterations is None:
            return "fitting"
        rate = self.seconds_per_iteration() or 0.0
        left = min(self.deadline - now, rate * (self.planned_iterations - engine.state.iteration))
        return format_duration(left)


def _length_attribute(lr_scheduler: Any) -> str:
    for name in SCHEDULE_LENGTH_ATTRIBUTES:
        if isinstance(getattr(lr_scheduler, name, None), int):
            return name
    raise ConfigError(
        f"lr_scheduler {type(lr_scheduler).__name__} has no schedule length "
        f"({', '.join(SCHEDULE_LENGTH_ATTRIBUTES)}) to fit to the time budget: use MONAI's "
        "WarmupCosineSchedule or torch's PolynomialLR / CosineAnnealingLR, or pass lr_scheduler=None",
        param="lr_scheduler",
    )
