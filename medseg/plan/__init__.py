"""Self-configuring bundles: fingerprint a labelled dataset, then plan a bundle from rules.

``medseg plan DATASET --output BUNDLE`` runs :func:`extract_fingerprint` (one parallel pass over
the data, which also validates every case) and :func:`make_plan` (nnU-Net v2's planning rules,
extended to CPU budgets), and writes ``BUNDLE/plans/fingerprint.json`` and ``plans/plan.json``.
"""

from medseg.plan.fingerprint import extract_fingerprint
from medseg.plan.planner import explain, make_plan

__all__ = ["explain", "extract_fingerprint", "make_plan"]
