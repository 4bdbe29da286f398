"""Output transforms for per-class metrics on MONAI engine outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from monai.handlers import from_engine

__all__ = ["select_class"]


def select_class(index: int, keys: Sequence[str] = ("pred", "label")) -> Callable[[Any], tuple]:
    """Output transform keeping background and channel ``index`` of one-hot ``pred``/``label``.

    Use with ``MeanDice(include_background=False, output_transform=select_class(1))`` to log
    the Dice of one class as a scalar ignite metric (CSV, TensorBoard, early stopping).
    """
    getter = from_engine(list(keys))

    def transform(output: Any) -> tuple:
        return tuple([item[[0, index]] for item in batch] for batch in getter(output))

    return transform
