"""TimeBudget on a real tiny training: it stops within the budget, at the end of its fitted schedule."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.networks.nets import UNet
from monai.optimizers import WarmupCosineSchedule

from medseg.engine import TimeBudget
from medseg.engine.budget import format_duration
from medseg.errors import ConfigError


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared machine, stable iteration times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _squares(count: int = 16, size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Images with one bright square each (plus noise) and its mask: a task a tiny U-Net learns."""
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(count):
        x, y = torch.randint(0, size - 12, (2,), generator=generator).tolist()
        label = torch.zeros(1, size, size)
        label[:, y : y + 12, x : x + 12] = 1
        image = label + 0.3 * torch.randn(1, size, size, generator=generator)
        items.append({"image": image, "label": label})
    return items


def _trainer(schedule: str, max_epochs: int = 1):
    torch.manual_seed(0)
    network = UNet(2, 1, 2, channels=(8, 16), strides=(2,), num_res_units=0)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    loader = torch.utils.data.DataLoader(_squares(), batch_size=2, shuffle=True)
    total = max_epochs * len(loader)
    if schedule == "cosine":
        scheduler = WarmupCosineSchedule(optimizer, warmup_steps=0, t_total=total)
    else:
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total, power=0.9)
    ce = torch.nn.CrossEntropyLoss()
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=lambda pred, label: ce(pred, label[:, 0].long()),
        train_handlers=[LrScheduleHandler(scheduler, epoch_level=False, print_lr=False)],
    )
    return trainer, scheduler, len(loader)


@pytest.mark.parametrize("schedule", ["cosine", "poly"])
def test_stops_within_the_budget_at_the_end_of_the_fitted_schedule(schedule: str) -> None:
    start = time.time()
    trainer, scheduler, epoch_length = _trainer(schedule, max_epochs=1)
    budget = TimeBudget(0.15, lr_scheduler=scheduler, start_time=start, reserve_seconds=2.0)
    budget.attach(trainer)
    trainer.run()
    elapsed = time.time() - start

    assert elapsed <= 0.15 * 60 + 0.5
    # it used the budget rather than stopping early (the machine's speed varies: some slack)
    assert elapsed >= 0.15 * 60 - 2.0 - 3.0
    assert not budget.stopped_at_deadline
    # the one planned epoch was refitted to the more that fit 9 seconds
    assert budget.planned_iterations is not None and budget.planned_iterations > epoch_length
    assert trainer.state.iteration == budget.planned_iterations
    assert trainer.state.max_epochs == -(-budget.planned_iterations // epoch_length)
    length = scheduler.t_total if schedule == "cosine" else scheduler.total_iters
    assert length == trainer.state.iteration
    # the schedule ended at its final value (0), after starting at the full rate
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)
    assert torch.isfinite(torch.as_tensor(trainer.state.output[0]["loss"]))


def test_time_spent_before_training_counts_and_max_epochs_caps() -> None:
    trainer, scheduler, epoch_length = _trainer("cosine", max_epochs=2)
    # 6 of the 12 seconds already spent (data caching): the run may take only what is left
    start = time.time() - 6.0
    budget = TimeBudget(
        0.2,
        lr_scheduler=scheduler,
        start_time=start,
        min_measure_seconds=0.0,
        reserve_seconds=1.0,
        max_epochs=3,
    )
    budget.attach(trainer)
    trainer.run()
    assert time.time() - start <= 12.5
    # three epochs take far less than the budget on any machine: the cap holds
    assert trainer.state.iteration == budget.planned_iterations == 3 * epoch_length
    assert trainer.state.epoch == 3
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-9)


def test_a_spent_budget_stops_before_the_first_iteration() -> None:
    trainer, scheduler, _ = _trainer("cosine")
    budget = TimeBudget(0.05, lr_scheduler=scheduler, start_time=time.time() - 60.0)
    budget.attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 0 and budget.stopped_at_deadline


def test_a_scheduler_without_a_length_is_refused() -> None:
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="no schedule length"):
        TimeBudget(1.0, lr_scheduler=torch.optim.lr_scheduler.ExponentialLR(optimizer, 0.9))
    with pytest.raises(ConfigError, match="minutes must be positive"):
        TimeBudget(0.0)


def test_eta_format() -> None:
    assert format_duration(75.4) == "1:15"
    assert format_duration(3 * 3600 + 62) == "3:01:02"
    assert format_duration(-3) == "0:00"


def test_the_progress_bar_shows_the_eta(capsys) -> None:
    from ignite.engine import Engine

    from medseg.engine import ProgressBar

    def step(engine: Engine, batch: int) -> dict[str, float]:
        time.sleep(0.01)
        return {"loss": 0.5}

    engine = Engine(step)
    ProgressBar().attach(engine)
    budget = TimeBudget(0.04, warmup_iterations=1, min_measure_seconds=0.1, reserve_seconds=0.5)
    budget.attach(engine)
    engine.run(range(10), max_epochs=1)
    err = capsys.readouterr().err
    assert "eta=fitting" in err and "loss=0.5" in err
    assert any(f"eta=0:0{s}" in err for s in range(3)), err[-500:]  # 2.4 s budget, 0.5 s reserve
    assert engine.state.iteration > 10
    if budget.stopped_at_deadline:  # the last iterations ran slower than fitted: the clock stopped it
        assert 0 < budget.planned_iterations - engine.state.iteration <= 0.1 * budget.planned_iterations
    else:  # the usual end: exactly the fitted schedule
        assert budget.planned_iterations == engine.state.iteration


def test_a_machine_that_slows_down_still_stops_within_the_budget() -> None:
    """Iterations 20x slower after the first fit: refitted, and the clock stops it in time at worst."""
    from ignite.engine import Engine

    def step(engine: Engine, batch: int) -> dict[str, float]:
        time.sleep(0.005 if engine.state.iteration < 150 else 0.1)
        return {"loss": 0.5}

    start = time.time()
    engine = Engine(step)
    budget = TimeBudget(0.05, start_time=start, warmup_iterations=1, min_measure_seconds=0.2, reserve_seconds=0.5)
    budget.attach(engine)
    engine.run(range(10), max_epochs=1)
    elapsed = time.time() - start
    assert 3.0 - 0.5 - 0.5 <= elapsed <= 3.0 - 0.25 + 0.1 + 0.05  # hard stop, plus at most one slow step
    assert engine.state.iteration > 150
    # the first fit planned for fast iterations; the slow ones were refitted to a shorter schedule
    assert budget.planned_iterations is not None and budget.planned_iterations < 2.5 / 0.005
