"""Ignite handlers that bundles attach to MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``."""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

from medseg.io.atomic import atomic_write

__all__ = [
    "AtomicCheckpointSaver",
    "CaseLog",
    "CSVLogger",
    "ModelEMA",
    "ProgressBar",
    "ResumeFromLatest",
    "TrainingCurvePlot",
    "atomic_torch_save",
]

logger = logging.getLogger(__name__)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place.

    A kill mid-write leaves the previous file intact (rename is atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)

    atomic_write(path, write)


class _AtomicSaveHandler(BaseSaveHandler):
    """Wraps MONAI's disk saver: same file names, atomic writes, no delete-before-write gap."""

    def __init__(self, wrapped: Any) -> None:
        self.dirname = Path(wrapped.dirname)
        self.fixed_filename: str | None = getattr(wrapped, "filename", None)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
            return  # one writer per checkpoint under DDP, as ignite's DiskSaver does
        atomic_torch_save(checkpoint, self.dirname / (self.fixed_filename or filename))

    def remove(self, filename: str) -> None:
        # With a fixed name (model.pt) the next save replaces the file atomically; deleting it
        # first, as ignite does before saving a new best, would leave a window with no model.
        if self.fixed_filename is not None:
            return
        path = self.dirname / filename
        if path.exists():
            path.unlink()


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver` whose files are written atomically.

    Same arguments as ``CheckpointSaver``. MONAI writes checkpoints in place (``atomic=False``),
    so a kill during ``torch.save`` can leave a truncated ``model.pt``; here every file is
    written to a temporary name and renamed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Create the folder first: ignite's DiskSaver checks for it and then creates it, which
        # fails with FileExistsError when another DDP rank creates it in between.
        save_dir = kwargs.get("save_dir", args[0] if args else None)
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicSaveHandler(checkpoint.save_handler)


_EPOCH_CKPT = re.compile(r"epoch=(\d+)\.pt$")


class ModelEMA(EMAHandler):
    """ignite's ``EMAHandler`` (exponential moving average of the weights) with a timm-style warm-up.

    Validate and save ``averaged`` instead of the raw network: the average smooths out the
    step-to-step noise of a high learning rate, so the validated model is better early in
    training and at the end (Polyak averaging). ignite warms the momentum up linearly; here the
    decay follows ``min(decay, (1 + t) / (10 + t))`` at trainer iteration ``t`` (the
    ``num_updates`` rule of timm and TensorFlow), so the first iterations are not dominated by
    the random initial weights and a resumed run continues the same schedule. Buffers (e.g.
    batch-norm statistics) follow the trained network.

    Args:
        network: the trained network (a ``DistributedDataParallel`` wrapper is unwrapped).
        decay: the largest decay per iteration; ``1 - decay`` is the weight of the newest weights.
        enabled: when false, ``averaged`` is the trained network itself and nothing is updated.
    """

    def __init__(self, network: torch.nn.Module, decay: float = 0.99, enabled: bool = True) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        super().__init__(network, momentum=1.0 - decay, handle_buffers="copy")
        self.decay = decay
        self.enabled = enabled

    @property
    def averaged(self) -> torch.nn.Module:
        return self.ema_model if self.enabled else self.model

    def attach(  # type: ignore[override]
        self,
        engine: Engine,
        name: str = "ema_momentum",
        warn_if_exists: bool = False,
        event: Any = Events.ITERATION_COMPLETED,
    ) -> None:
        if self.enabled and not engine.has_event_handler(self._update_ema_model, event):
            super().attach(engine, name, warn_if_exists, event)

    def _update_ema_model(self, engine: Engine, name: str) -> None:
        step = engine.state.iteration
        setattr(engine.state, name, 1.0 - min(self.decay, (1.0 + step) / (10.0 + step)))
        super()._update_ema_model(engine, name)


class ResumeFromLatest:
    """Resume training from the newest ``*checkpoint_epoch=N.pt`` in ``ckpt_dir``, if any.

    Args:
        ckpt_dir: folder where an :class:`AtomicCheckpointSaver` with ``save_interval`` writes.
        load_dict: objects to restore, e.g. ``{"model": net, "optimizer": opt, "trainer": trainer}``.
        enabled: switch, so configs can expose ``resume: false``.
        map_location: where to load tensors.
    """

    def __init__(
        self, ckpt_dir: str, load_dict: dict, enabled: bool = True, map_location: Any = None
    ) -> None:
        self.ckpt_dir = Path(ckpt_dir)
        self.load_dict = load_dict
        self.enabled = enabled
        self.map_location = map_location

    def latest(self) -> Path | None:
        if not self.ckpt_dir.is_dir():
            return None
        found = [
            (int(m.group(1)), p) for p in self.ckpt_dir.glob("*.pt") if (m := _EPOCH_CKPT.search(p.name))
        ]
        return max(found)[1] if found else None

    def attach(self, engine: Engine) -> None:
        path = self.latest() if self.enabled else None
        if path is None:
            return
        logger.info("resuming from %s", path)
        CheckpointLoader(
            load_path=str(path), load_dict=self.load_dict, map_location=self.map_location
        ).attach(engine)


class CSVLogger:
    """Append one row per epoch to a CSV file: epoch, mean loss, learning rate and validation metrics.

    Attach to the trainer. Args:
        filename: CSV path (its folder is created).
        optimizer: optimizer whose first group's learning rate is logged.
        evaluator: engine whose ``state.metrics`` are logged after each validation run.
        loss_key: key of the loss in ``engine.state.output`` items (MONAI trainers output a list of dicts).
    """

    def __init__(
        self,
        filename: str,
        optimizer: torch.optim.Optimizer | None = None,
        evaluator: Engine | None = None,
        loss_key: str = "loss",
    ) -> None:
        self.filename = Path(filename)
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.loss_key = loss_key
        self._losses: list[float] = []
        self._metrics: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self._collect_metrics)
        # Run after the validation handler (registered earlier on EPOCH_COMPLETED) has finished.
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._losses = []
        self._metrics = {}

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            if isinstance(item, Mapping) and self.loss_key in item:
                self._losses.append(float(item[self.loss_key]))
                break

    def _collect_metrics(self, evaluator: Engine) -> None:
        self._metrics = {k: float(v) for k, v in evaluator.state.metrics.items() if _is_number(v)}

    def _write(self, engine: Engine) -> None:
        row: dict[str, Any] = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "loss": sum(self._losses) / len(self._losses) if self._losses else float("nan"),
        }
        if self.optimizer is not None:
            row["lr"] = self.optimizer.param_groups[0]["lr"]
        row.update(self._metrics)
        self.rows.append(row)
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        # Rewrite the whole file: a metric column can appear after the first epochs.
        existing = self._read_rows()
        fields = _union_keys(existing + [row])
        with open(self.filename, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(existing + [row])

    def _read_rows(self) -> list[dict[str, Any]]:
        if not self.filename.is_file():
            return []
        with open(self.filename, newline="") as handle:
            return list(csv.DictReader(handle))


def _is_number(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _union_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)
    return keys


class TrainingCurvePlot:
    """Write a PNG of the training curve (loss and validation metrics per epoch) when training ends.

    Reads the CSV that :class:`CSVLogger` writes, so a resumed run plots its whole history.
    """

    def __init__(self, csv_file: str, filename: str, title: str = "training curve") -> None:
        self.csv_file = Path(csv_file)
        self.filename = Path(filename)
        self.title = title

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not self.csv_file.is_file():
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        with open(self.csv_file, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            return
        epochs = [int(r["epoch"]) for r in rows]
        fig, loss_ax = plt.subplots(figsize=(7, 4), dpi=100)
        loss_ax.plot(epochs, [float(r["loss"]) for r in rows], color="tab:blue", label="train loss")
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("loss", color="tab:blue")
        metric_keys = [k for k in rows[0] if k not in {"epoch", "iteration", "loss", "lr"}]
        if metric_keys:
            metric_ax = loss_ax.twinx()
            for key in metric_keys:
                points = [
                    (e, float(r[key]))
                    for e, r in zip(epochs, rows, strict=True)
                    if r.get(key) not in (None, "")
                ]
                if points:
                    metric_ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key)
            metric_ax.set_ylabel("validation metric")
            metric_ax.set_ylim(0, 1)
            metric_ax.legend(loc="lower right", fontsize=8)
        loss_ax.set_title(self.title)
        fig.tight_layout()
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(self.filename)
        plt.close(fig)


class ProgressBar:
    """ignite's tqdm progress bar showing the running loss; silent when ``enabled`` is false.

    When a :class:`medseg.engine.TimeBudget` runs, the bar also shows its ``eta`` (the time left
    of the fitted schedule), read from ``engine.state`` at each update.
    """

    def __init__(self, enabled: bool = True, output_transform: Callable | None = None) -> None:
        self.enabled = enabled
        self.output_transform = output_transform or _first_loss

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar as IgniteProgressBar

        def shown(output: Any) -> dict[str, Any]:
            values = self.output_transform(output)
            values = values if isinstance(values, dict) else {"output": values}
            eta = getattr(engine.state, "eta", None)
            return {**values, "eta": eta} if isinstance(eta, str) else values

        IgniteProgressBar(persist=False).attach(engine, output_transform=shown)


def _first_loss(output: Any) -> dict[str, float]:
    item = output[0] if isinstance(output, list) and output else output
    if isinstance(item, Mapping) and "loss" in item:
        return {"loss": float(item["loss"])}
    return {}


class CaseLog:
    """Record which cases an engine saw, one file per process: ``<prefix>rank<R>.txt``.

    With DDP each rank must train on its own share of the data; this log makes it checkable.
    Each line is ``epoch<TAB>case file``.
    """

    def __init__(self, prefix: str, key: str = "image") -> None:
        self.prefix = prefix
        self.key = key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        path = Path(f"{self.prefix}rank{rank}.txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            for name in _batch_filenames(engine.state.batch, self.key):
                handle.write(f"{engine.state.epoch}\t{name}\n")


def _batch_filenames(batch: Any, key: str) -> list[str]:
    items = batch if isinstance(batch, list) else [batch]
    names: list[str] = []
    for item in items:
        value = item.get(key) if isinstance(item, Mapping) else None
        meta = getattr(value, "meta", {}) or {}
        found = meta.get("filename_or_obj")
        if found is None:
            continue
        names.extend([str(f) for f in found] if isinstance(found, (list, tuple)) else [str(found)])
    return names
