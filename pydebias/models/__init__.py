"""Models: the protocol the model-level methods work with, and the small backbones of
the built-in benchmarks (trained on the CPU by :mod:`pydebias.data`)."""
from .protocol import EncoderHead
from .small import SmallCNN, TabularMLP
from .training import embed_batches, train_classifier, train_tabular_mlp

__all__ = ["EncoderHead", "SmallCNN", "TabularMLP", "embed_batches", "train_classifier",
           "train_tabular_mlp"]
