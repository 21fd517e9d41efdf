"""Modules and trainers: the last-layer trainer (more modules arrive with the methods)."""
from .last_layer import balance_weights, train_linear_head
from .masked import MaskedLinear, fold_masks, masked_linear, masked_linear_many

__all__ = ["balance_weights", "train_linear_head", "MaskedLinear", "fold_masks", "masked_linear",
           "masked_linear_many"]
