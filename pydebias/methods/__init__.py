"""Mitigation methods and baselines, one file each, all with the same shape."""
from .baselines import DFR, ERM

__all__ = ["ERM", "DFR"]
