"""Which bundle segments a series the node received: routing rules on the series' DICOM header.

A hospital node serves several models (hippocampus MR, liver CT, ...) behind one AE title, as
MONAI Deploy's Informatics Gateway and PACS auto-routing do: each series goes to the first rule
it matches, and a series no rule matches is refused with the reason (its header values and the
rules), never segmented by a model meant for something else.

A rule is written ``CONDITIONS:BUNDLE``: ``CONDITIONS`` is ``*`` (any series) or comma-separated
``Keyword=value`` (equal, ignoring case and surrounding spaces) and ``Keyword~regex`` (a
case-insensitive :func:`re.search`), all of which must hold; keywords are DICOM keywords of the
series' first instance (``Modality``, ``SeriesDescription``, ``BodyPartExamined``,
``Manufacturer``, ...). Example: ``Modality=MR,SeriesDescription~hippo:bundles/hippocampus_unet3d``.
The first ``:`` ends the conditions, so a regex cannot hold ``:`` or ``,``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.multival import MultiValue

from medseg.errors import ConfigError
from medseg.paths import resolve_bundle_path

__all__ = ["Condition", "Route", "parse_route", "header_value", "choose_route", "no_route_reason"]


@dataclass(frozen=True)
class Condition:
    """One test on a header value: ``keyword=value`` (``op`` ``=``) or ``keyword~regex`` (``op`` ``~``)."""

    keyword: str
    op: str
    value: str

    def holds(self, ds: Dataset) -> bool:
        """Whether the series whose first instance is ``ds`` passes this test (a missing value never does)."""
        actual = header_value(ds, self.keyword)
        if actual is None:
            return False
        if self.op == "=":
            return actual.strip().casefold() == self.value.strip().casefold()
        return re.search(self.value, actual, flags=re.IGNORECASE) is not None

    def __str__(self) -> str:
        return f"{self.keyword}{self.op}{self.value}"


@dataclass(frozen=True)
class Route:
    """A routing rule: the series that pass every condition (all series if none) go to ``bundle``."""

    conditions: tuple[Condition, ...]
    bundle: Path

    def matches(self, ds: Dataset) -> bool:
        """Whether the series whose first instance is ``ds`` goes to this route's bundle."""
        return all(condition.holds(ds) for condition in self.conditions)

    @property
    def rule(self) -> str:
        """The conditions as written (``*`` for any series)."""
        return ",".join(str(c) for c in self.conditions) or "*"

    def __str__(self) -> str:
        return f"{self.rule}:{self.bundle.name}"


def parse_route(text: str) -> Route:
    """``CONDITIONS:BUNDLE`` -> :class:`Route` (the bundle resolved like ``--bundle``).

    Args:
        text: e.g. ``Modality=MR,SeriesDescription~hippo:bundles/hippocampus_unet3d`` or ``*:NAME``.

    Raises:
        ConfigError: no ``:``, an unknown DICOM keyword, a condition without ``=``/``~``, a bad
            regular expression, or a bundle folder that does not exist.
    """
    rule, colon, bundle_text = text.partition(":")
    if not colon or not rule.strip() or not bundle_text.strip():
        raise ConfigError(
            f"route must be CONDITIONS:BUNDLE (e.g. 'Modality=MR,SeriesDescription~hippo:hippocampus_unet3d'"
            f" or '*:BUNDLE'), got {text!r}",
            param="route",
        )
    conditions = () if rule.strip() == "*" else tuple(_condition(part, text) for part in rule.split(","))
    bundle = resolve_bundle_path(bundle_text.strip())
    if bundle is None:
        raise ConfigError(
            f"route {text!r}: no bundle folder {bundle_text.strip()!r}; give a bundle path or a name under the"
            " bundles folder",
            param="route",
        )
    return Route(conditions, bundle)


def _condition(part: str, text: str) -> Condition:
    match = re.fullmatch(r"\s*([A-Za-z0-9]+)\s*([=~])(.*)", part)
    if match is None:
        raise ConfigError(
            f"route {text!r}: condition {part!r} must be Keyword=value or Keyword~regex", param="route"
        )
    keyword, op, value = match.groups()
    if tag_for_keyword(keyword) is None:
        raise ConfigError(
            f"route {text!r}: {keyword!r} is not a DICOM keyword (e.g. Modality, SeriesDescription,"
            " BodyPartExamined)",
            param="route",
        )
    if op == "~":
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(
                f"route {text!r}: bad regular expression {value!r}: {exc}", param="route"
            ) from exc
    return Condition(keyword, op, value)


def header_value(ds: Dataset, keyword: str) -> str | None:
    """The value of ``keyword`` in ``ds`` as text (multiple values joined by ``\\``); None if absent."""
    element = ds.get(keyword)
    if element is None or element == "":
        return None
    if isinstance(element, MultiValue):
        return "\\".join(str(v) for v in element)
    return str(element)


def choose_route(routes: Sequence[Route], ds: Dataset) -> Route | None:
    """The first route the series whose first instance is ``ds`` matches, or None."""
    return next((route for route in routes if route.matches(ds)), None)


def no_route_reason(routes: Sequence[Route], ds: Dataset) -> str:
    """Why a series went nowhere: its values of the keywords the rules test, and the rules."""
    keywords = dict.fromkeys(
        ["Modality", "SeriesDescription"] + [c.keyword for r in routes for c in r.conditions]
    )
    values = ", ".join(f"{k}={header_value(ds, k)!r}" for k in keywords)
    rules = "; ".join(route.rule for route in routes)
    return f"no route matches this series ({values}); routes: {rules}"
