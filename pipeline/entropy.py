"""Plug-in entropy of a histogram: numpy only, so that the figures and findings use it without
importing the estimators (and torch with them)."""

from __future__ import annotations

import numpy as np


def entropy_of_counts(counts: np.ndarray) -> float:
    """Plug-in entropy in bits of a histogram."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())
