"""Modules and trainers: the last-layer trainer (more modules arrive with the methods)."""
from .last_layer import balance_weights, train_linear_head

__all__ = ["balance_weights", "train_linear_head"]
