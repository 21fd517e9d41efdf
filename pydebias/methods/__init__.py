"""Mitigation methods and baselines, one file each, all with the same shape."""
from .baselines import AFR, DFR, ERM, JTT, ClassBalanced
from .neurontune import NeuronTune
from .nsf import NSF

__all__ = ["ERM", "DFR", "ClassBalanced", "JTT", "AFR", "NeuronTune", "NSF"]
