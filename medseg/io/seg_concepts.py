"""What each output label of a bundle is: DICOM coded concepts, display colour, SEG segment number.

A DICOM SEG describes every segment with a *segmented property category* and *type* from a
coding scheme (SNOMED CT ``SCT``, DICOM ``DCM``), optionally with type modifiers (e.g. anterior,
left). The codes come, in this order of preference, from:

1. the bundle's metadata, ``network_data_format.outputs.pred.segment_codes``::

       "segment_codes": {
           "1": {"category": ["91723000", "SCT", "Anatomical Structure"],
                 "type": ["5366008", "SCT", "Hippocampus"],
                 "modifiers": [["255549009", "SCT", "Anterior"]],
                 "color": [255, 170, 0]}
       }

2. a look-up of the label name in pydicom's code dictionary (``pydicom.sr.codedict.codes.SCT``):
   direction words (anterior, posterior, left, right, ...) become type modifiers and the rest
   of the name the type, e.g. "anterior hippocampus" -> type Hippocampus (SCT 5366008) with
   modifier Anterior (SCT 255549009), category Anatomical Structure (SCT 91723000);
3. otherwise a private code (scheme ``99MEDSEG``, as DICOM allows for local codes) that carries
   the label name, with a warning: the segment is still valid DICOM, but not semantically coded.

Only pydicom's ``Code`` and highdicom's ``CodedConcept(value, scheme_designator, meaning)`` are
used; both are the same in pydicom 2.4 / highdicom 0.23 and pydicom 3 / highdicom 0.28.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medseg.errors import BundleError

__all__ = [
    "Concept",
    "SegmentSpec",
    "ANATOMICAL_STRUCTURE",
    "PRIVATE_SCHEME",
    "DEFAULT_COLORS",
    "segment_specs",
    "lookup_sct",
    "rgb_to_dicom_lab",
]

logger = logging.getLogger(__name__)

PRIVATE_SCHEME = "99MEDSEG"


@dataclass(frozen=True)
class Concept:
    """A coded concept: code value, coding scheme designator, code meaning."""

    value: str
    scheme: str
    meaning: str

    def as_list(self) -> list[str]:
        return [self.value, self.scheme, self.meaning]

    def coded(self) -> Any:
        """The concept as ``highdicom.sr.CodedConcept``."""
        from highdicom.sr import CodedConcept

        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


# SNOMED CT "Anatomical Structure" (pydicom codes.SCT.AnatomicalStructure), CID 7150 category.
ANATOMICAL_STRUCTURE = Concept("91723000", "SCT", "Anatomical Structure")

# Words of a label name that are type modifiers, with the SNOMED CT keyword pydicom knows them by.
_MODIFIER_WORDS = {
    "anterior": "Anterior",
    "posterior": "Posterior",
    "left": "Left",
    "right": "Right",
    "superior": "Superior",
    "inferior": "Inferior",
    "medial": "Medial",
    "lateral": "Lateral",
}

# Distinct colours (RGB) for label values 1, 2, ... when the metadata gives none.
DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)


@dataclass(frozen=True)
class SegmentSpec:
    """One output label as a SEG segment.

    Attributes:
        value: the label value in the label map (the network's output channel).
        number: the SEG segment number (1, 2, ... in label order).
        label: segment label (the bundle's label name).
        category: segmented property category.
        type: segmented property type.
        modifiers: segmented property type modifiers.
        color: display colour (RGB, 0-255), used for the overlay and the SEG.
        source: where the codes came from: ``"metadata"``, ``"dictionary"`` or ``"private"``.
    """

    value: int
    number: int
    label: str
    category: Concept
    type: Concept
    modifiers: tuple[Concept, ...] = field(default=())
    color: tuple[int, int, int] = (255, 0, 0)
    source: str = "metadata"


def _sct_dictionary() -> Any:
    from pydicom.sr.codedict import codes

    return codes.SCT


def lookup_sct(keyword: str) -> Concept | None:
    """The SNOMED CT concept pydicom's code dictionary knows by a CamelCase keyword, or None."""
    try:
        code = getattr(_sct_dictionary(), keyword)
    except (AttributeError, KeyError):
        return None
    return Concept(str(code.value), str(code.scheme_designator), str(code.meaning))


def _concept(value: Any, where: str) -> Concept:
    if isinstance(value, Mapping):
        items = [value.get("value"), value.get("scheme"), value.get("meaning")]
    else:
        items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    if len(items) != 3 or not all(isinstance(v, str) and v.strip() for v in items):
        raise BundleError(
            f"{where} must be [code value, coding scheme, code meaning], e.g. "
            f'["91723000", "SCT", "Anatomical Structure"]; got {value!r}'
        )
    return Concept(*(v.strip() for v in items))


def _from_name(name: str) -> tuple[Concept, Concept, tuple[Concept, ...]] | None:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name.lower()) if w]
    modifiers = []
    rest = []
    for word in words:
        if word in _MODIFIER_WORDS:
            concept = lookup_sct(_MODIFIER_WORDS[word])
            if concept is None:
                return None
            modifiers.append(concept)
        else:
            rest.append(word)
    if not rest:
        return None
    structure = lookup_sct("".join(w.capitalize() for w in rest))
    if structure is None:
        return None
    return ANATOMICAL_STRUCTURE, structure, tuple(modifiers)


def _color(value: Any, where: str) -> tuple[int, int, int]:
    if (
        not isinstance(value, Sequence)
        or len(value) != 3
        or not all(isinstance(v, int) and 0 <= v <= 255 for v in value)
    ):
        raise BundleError(f"{where} must be [r, g, b] with integers 0-255, got {value!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


def segment_specs(labels: Mapping[int, str], metadata: Mapping[str, Any]) -> list[SegmentSpec]:
    """The SEG segments of a bundle's foreground labels (every label value except 0), in value order.

    Args:
        labels: label value -> name (``Bundle.labels``).
        metadata: the bundle's parsed ``metadata.json``.

    Raises:
        BundleError: a ``segment_codes`` entry is malformed.
    """
    pred = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    declared = pred.get("segment_codes", {}) or {}
    if not isinstance(declared, Mapping):
        raise BundleError("network_data_format.outputs.pred.segment_codes must map label values to codes")
    specs = []
    for number, value in enumerate(sorted(v for v in labels if v != 0), start=1):
        name = labels[value]
        color = DEFAULT_COLORS[(number - 1) % len(DEFAULT_COLORS)]
        entry = declared.get(str(value))
        where = f"segment_codes[{value!r}]"
        if entry is not None:
            if not isinstance(entry, Mapping) or "type" not in entry:
                raise BundleError(f"{where} needs at least a 'type' code")
            category = _concept(entry.get("category", ANATOMICAL_STRUCTURE.as_list()), f"{where}.category")
            type_ = _concept(entry["type"], f"{where}.type")
            modifiers = tuple(
                _concept(m, f"{where}.modifiers[{i}]") for i, m in enumerate(entry.get("modifiers", []))
            )
            if "color" in entry:
                color = _color(entry["color"], f"{where}.color")
            source = "metadata"
        else:
            found = _from_name(name)
            if found is not None:
                category, type_, modifiers = found
                source = "dictionary"
            else:
                logger.warning(
                    "label %d (%r) has no code in the bundle metadata nor in pydicom's SNOMED CT dictionary; "
                    "the SEG gets a private %s code for it",
                    value,
                    name,
                    PRIVATE_SCHEME,
                )
                category = ANATOMICAL_STRUCTURE
                type_ = Concept(f"L{value}", PRIVATE_SCHEME, name[:64])
                modifiers = ()
                source = "private"
        specs.append(SegmentSpec(value, number, name, category, type_, modifiers, color, source))
    return specs


def _srgb_to_linear(c: float) -> float:
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def rgb_to_dicom_lab(rgb: Sequence[int]) -> list[int]:
    """sRGB (0-255) to the scaled CIELab triplet of DICOM ``RecommendedDisplayCIELabValue`` (D65).

    DICOM scales L* 0..100 and a*, b* -128..127 linearly to 0..65535 (PS3.3 C.10.7.1.1).
    """
    # highdicom >= 0.27 has color.CIELabColor.from_rgb; 0.22 (MONAI Label stack) has not
    r, g, b = (_srgb_to_linear(v / 255.0) for v in rgb)
    x = (0.4124564 * r + 0.3575761 * g + 0.1804375 * b) / 0.95047
    y = 0.2126729 * r + 0.7151522 * g + 0.0721750 * b
    z = (0.0193339 * r + 0.1191920 * g + 0.9503041 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1.0 / 3.0) if t > (6.0 / 29.0) ** 3 else t / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0

    lab_l = 116.0 * f(y) - 16.0
    lab_a = 500.0 * (f(x) - f(y))
    lab_b = 200.0 * (f(y) - f(z))
    scaled = [lab_l * 65535.0 / 100.0, (lab_a + 128.0) * 65535.0 / 255.0, (lab_b + 128.0) * 65535.0 / 255.0]
    return [int(round(min(max(v, 0.0), 65535.0))) for v in scaled]
