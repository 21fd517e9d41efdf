"""Mitigation methods and baselines, one file each, one call shape per family
(:class:`EmbeddingMethod`, :class:`ModelMethod`), all listed in :data:`REGISTRY`."""
from .base import EmbeddingMethod, Method, ModelMethod
from .baselines import AFR, DFR, ERM, JTT, ClassBalanced
from .blade import BLADE
from .clarc import AClArC, PClArC, RRClArC
from .masktune import MaskTune
from .neurontune import NeuronTune
from .nsf import NSF
from .registry import REGISTRY, MethodSpec, methods_markdown

__all__ = ["Method", "EmbeddingMethod", "ModelMethod", "ERM", "DFR", "ClassBalanced", "JTT", "AFR", "NeuronTune",
           "NSF", "RRClArC", "PClArC", "AClArC", "MaskTune", "BLADE", "REGISTRY", "MethodSpec", "methods_markdown"]
