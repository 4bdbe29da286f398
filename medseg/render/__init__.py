"""Generated bundles: the templates their files are rendered from, the ``plans/`` records, the check.

``medseg plan`` and ``medseg ensemble choose`` write a bundle's ``plans/`` folder and render every
config and doc from it; ``medseg bundle check`` renders it again and compares. One module per part:
:mod:`~medseg.render.records` (every ``plans/`` file name, its reader and the typed
:class:`~medseg.render.records.Plan`), :mod:`~medseg.render.template` (:class:`BundleTemplate`,
whose methods render each file from small pieces), :mod:`~medseg.render.ensemble`
(:class:`EnsembleTemplate`, which overrides what an ensemble does differently) and
:mod:`~medseg.render.check`. A new kind of bundle is one new template subclass.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medseg.render.check import check_bundle, rendered_files
from medseg.render.ensemble import EnsembleTemplate
from medseg.render.records import Plan, generated_from
from medseg.render.template import BUNDLE_FILES, BundleTemplate

__all__ = [
    "BUNDLE_FILES",
    "BundleTemplate",
    "EnsembleTemplate",
    "Plan",
    "check_bundle",
    "generated_from",
    "render_bundle",
    "rendered_files",
    "write_files",
]


def write_files(files: Mapping[str, str], bundle_dir: str | os.PathLike) -> list[Path]:
    """Write rendered files under ``bundle_dir`` (each atomically, folders created); return the paths."""
    from medseg.io.atomic import atomic_write_text

    root = Path(bundle_dir)
    written = []
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        written.append(atomic_write_text(path, text))
    return written


def render_bundle(
    plan: Plan | Mapping[str, Any],
    bundle_dir: str | os.PathLike,
    dataset_folder: str | None = None,
    record: Mapping[str, Any] | None = None,
    cv: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Render a planned bundle and write every file under ``bundle_dir``; return the paths written.

    Everything is rendered before anything is written, with the plan's template (an interactive
    plan's :class:`~medseg.render.interactive.InteractiveTemplate`). Args as :class:`BundleTemplate`.
    """
    from medseg.render.interactive import planned_template

    template = planned_template(plan)
    return write_files(template(plan, dataset_folder, record, cv).files(), bundle_dir)
