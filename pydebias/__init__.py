"""pydebias: find and remove spurious bias (shortcut features) from trained models.

Heavy loops run in native kernels (``pydebias._C`` on the CPU, ``pydebias.kernels`` in
Triton on the GPU) with a pure-torch reference for each (:mod:`pydebias.reference`).
"""
from . import _mkl
from ._version import __version__
from .data import EmbeddingSet
from .export import export
from .metrics import GroupReport, evaluate
from .stats import NeuronStats, grouped_quantiles, neuron_stats
from .sweep import mask_sweep

__all__ = ["__version__", "EmbeddingSet", "GroupReport", "evaluate", "NeuronStats", "neuron_stats",
           "grouped_quantiles", "mask_sweep", "export"]

_mkl.install()  # before any real MKL vector-math call, and before every optimizer step
