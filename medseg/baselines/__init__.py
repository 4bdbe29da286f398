"""Baselines the networks are measured against, not part of segmenting with a bundle.

:mod:`medseg.baselines.classical` holds the classical (pre-deep-learning) methods: Otsu, region
growing and k-means, scored by ``benchmarks/classical.py`` as the floor of the networks' Dice.
"""

__all__: list[str] = []
