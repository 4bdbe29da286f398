"""One planned value as ``plans/plan.json`` records it: the value, the rule that chose it, the data behind it.

Every rule of the planner returns one such entry, so ``medseg plan --explain`` can say why each
value is what it is, and :class:`medseg.render.records.Plan` reads them back.
"""

from __future__ import annotations

from typing import Any

__all__ = ["planned", "rounded"]


def planned(value: Any, rule: str, **data: Any) -> dict[str, Any]:
    """One planned value with the rule that produced it and the data behind it."""
    return {"value": value, "rule": rule, "data": data}


def rounded(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits, as plans record measured and derived numbers."""
    return float(f"{float(x):.{digits}g}")
