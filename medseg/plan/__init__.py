"""Self-configuring bundles: fingerprint a labelled dataset, then plan a bundle from rules.

``medseg plan DATASET --output BUNDLE`` runs :func:`extract_fingerprint` (one parallel pass over
the data, which also validates every case) and :func:`make_plan` (nnU-Net v2's planning rules,
extended to CPU budgets), and writes ``BUNDLE/plans/fingerprint.json`` and ``plans/plan.json``.
"""

from medseg.plan.fingerprint import extract_fingerprint

__all__ = ["extract_fingerprint"]
