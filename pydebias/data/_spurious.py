"""What every planted-correlation benchmark shares: the attribute draw and the checks of
its correlation parameters."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def attribute_for(rng: np.random.Generator, y: np.ndarray, p: float) -> np.ndarray:
    """Binary attribute equal to the binary label with probability ``p``, per sample."""
    return np.where(rng.random(y.shape[0]) < p, y, 1 - y).astype(np.int64)


def check_probability(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
    return p


def resolve_correlations(corr: float, val_corr: Optional[float], val_balanced: bool) -> Tuple[float, float]:
    """(train, val) correlations: val is biased like train unless ``val_corr`` is given or
    ``val_balanced`` (= 0.5) is set."""
    corr = check_probability("corr", corr)
    if val_balanced:
        if val_corr is not None and float(val_corr) != 0.5:
            raise ValueError(f"val_corr={val_corr} conflicts with val_balanced=True (which means 0.5)")
        val_corr = 0.5
    return corr, corr if val_corr is None else check_probability("val_corr", val_corr)
