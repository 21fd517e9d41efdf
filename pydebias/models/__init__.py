"""Models: the protocol the model-level methods work with, the small backbones of the
built-in benchmarks (trained on the CPU by :mod:`pydebias.data`) and the ImageNet-
pretrained EfficientNet-Lite0."""
from .efficientnet import EfficientNetLite0, efficientnet_lite0
from .protocol import EncoderHead
from .small import SmallCNN, TabularMLP
from .training import embed_batches, train_classifier, train_tabular_mlp

__all__ = ["EncoderHead", "EfficientNetLite0", "efficientnet_lite0", "SmallCNN", "TabularMLP", "embed_batches",
           "train_classifier", "train_tabular_mlp"]
