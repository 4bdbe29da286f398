"""Deliberate choices that differ from the rules, recorded in a bundle's ``plans/overrides.json``.

A shipped bundle keeps what its users rely on (label names, SEG codes, descriptive metadata) and
sometimes a recipe that differs from a rule (a mirroring axis, a batch size). Re-planning applies
them on top of the rules, and each overridden value keeps what the rule planned in its ``data``, so
``medseg plan --explain`` and the bundle's README say both.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from medseg.errors import ConfigError
from medseg.plan.values import planned as planned_value

__all__ = [
    "INPUT_OVERRIDES",
    "METADATA_TEXT_FIELDS",
    "WHY_KEY",
    "apply_overrides",
    "check_concepts",
    "metadata_text",
    "override_labels",
    "split_overrides",
]

# Overrides of what the bundle says rather than how it trains: label names, SEG codes and the
# metadata's descriptive text (a shipped bundle keeps the names and codes its users rely on).
INPUT_OVERRIDES = ("labels", "concepts", "metadata")
# ``{"why": {key: reason}}`` in overrides.json: why a deliberate choice differs from the rule (the
# reason joins the value's rule, so --explain and the bundle's README say it).
WHY_KEY = "why"
METADATA_TEXT_FIELDS = (
    "name",
    "task",
    "description",
    "data_source",
    "image_classes",
    "label_classes",
    "pred_classes",
    "references",
)


def split_overrides(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the input overrides (:data:`INPUT_OVERRIDES`) from those of planned values."""
    inputs = {k: v for k, v in overrides.items() if k in INPUT_OVERRIDES}
    values = {k: v for k, v in overrides.items() if k not in INPUT_OVERRIDES and k != WHY_KEY}
    return inputs, values


def override_labels(labels: Mapping[str, str], names: Any) -> dict[str, str]:
    """Label names from an override: the same label values as dataset.json, other names."""
    if not isinstance(names, Mapping) or {str(k) for k in names} != set(labels):
        raise ConfigError(
            f"override 'labels' must name every label value of dataset.json ({', '.join(labels)}) and no other"
        )
    return {str(k): str(names[str(k)] if str(k) in names else names[k]) for k in labels}


def metadata_text(fields: Any) -> dict[str, Any]:
    """Descriptive metadata.json fields from an override (see :data:`METADATA_TEXT_FIELDS`)."""
    if not isinstance(fields, Mapping) or not set(fields) <= set(METADATA_TEXT_FIELDS):
        raise ConfigError(
            f"override 'metadata' may set only {', '.join(METADATA_TEXT_FIELDS)} of metadata.json"
        )
    return dict(fields)


def apply_overrides(
    values: dict[str, dict[str, Any]], overrides: Mapping[str, Any], why: Mapping[str, str] | None = None
) -> None:
    """Replace planned values by recorded overrides, keeping what the rules planned in ``data``.

    A key names a planned value (``"batch_size"``) or a field inside one (``"augmentation.mirror_axes"``);
    each overridden value's rule says so, and its ``data.planned`` keeps the rule-based value and rule.

    Args:
        values: the planned values, replaced in place.
        overrides: ``{key: replacement}``.
        why: ``{key: reason}`` for some of the keys; the reason becomes part of the value's rule.
    """
    why = dict(why or {})
    unknown = sorted(set(why) - set(overrides) - set(INPUT_OVERRIDES))  # input overrides: reasons on file
    if unknown:
        raise ConfigError(f"overrides 'why' explains {unknown[0]!r}, which is not overridden; remove it")
    for key, replacement in overrides.items():
        name, _, field = key.partition(".")
        if name not in values:
            raise ConfigError(
                f"override {key!r} names no planned value; choose one of {', '.join(values)} "
                f"(or {', '.join(INPUT_OVERRIDES)})"
            )
        entry = values[name]
        planned = entry["data"].get("planned") or {
            "value": copy.deepcopy(entry["value"]),
            "rule": entry["rule"],
        }
        value = copy.deepcopy(entry["value"])
        if field:
            target = value
            *path, last = field.split(".")
            for part in path:
                target = target[part] if isinstance(target, dict) and part in target else None
                if target is None:
                    break
            if not isinstance(target, dict) or last not in target:
                raise ConfigError(f"override {key!r}: {name} has no field {field!r}")
            target[last] = replacement
        else:
            value = replacement
        overridden = sorted(set(entry["data"].get("overridden", [])) | {key})
        reasons = dict(entry["data"].get("why", {}))
        if key in why:
            reasons[key] = str(why[key])
        because = "".join(f" ({k}: {reasons[k]})" for k in overridden if k in reasons)
        values[name] = planned_value(
            value,
            f"override recorded in the bundle's plans/overrides.json ({', '.join(overridden)}): a deliberate "
            f"choice that differs from the rule{because}; the rule: {planned['rule']}",
            planned=planned,
            overridden=overridden,
            **({"why": reasons} if reasons else {}),
        )


def check_concepts(concepts: Mapping[str, Any] | None, labels: Mapping[str, str]) -> dict[str, Any] | None:
    """Check SEG codes given per label value (``{"1": {"category": [...], "type": [...]}}``)."""
    if not concepts:
        return None
    if not isinstance(concepts, Mapping):
        raise ConfigError("concepts must be an object of {label value: {category, type, modifiers, color}}")
    foreground = {k for k in labels if k != "0"}
    checked = {}
    for key, code in concepts.items():
        if str(key) not in foreground:
            raise ConfigError(
                f"concepts name label {key!r}, which is not a foreground label ({', '.join(sorted(foreground))})"
            )
        if not isinstance(code, Mapping) or "type" not in code:
            raise ConfigError(f"concepts of label {key} need at least a 'type' code [value, scheme, meaning]")
        checked[str(key)] = dict(code)
    return dict(sorted(checked.items(), key=lambda kv: int(kv[0])))
