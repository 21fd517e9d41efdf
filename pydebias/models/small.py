"""Small backbones trained on the CPU for the built-in benchmarks: a two-block CNN for
28 x 28 images and an MLP for tabular or bag-of-words rows. Their penultimate post-ReLU
activations are the embeddings; their last layer is the ERM head."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .protocol import EncoderHead


class SmallCNN(EncoderHead):
    """Two conv blocks, an ``embed_dim``-unit ReLU penultimate layer and a linear head.
    Input (B, in_channels, image_size, image_size); the embedding is ``fc``'s output."""

    embedding_layer = "fc"

    def __init__(self, n_classes: int, in_channels: int = 3, width: Tuple[int, int] = (16, 32),
                 embed_dim: int = 64, image_size: int = 28):
        super().__init__()
        c1, c2 = width
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten())
        side = image_size // 4
        self.fc = nn.Sequential(nn.Linear(c2 * side * side, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))

    def reset_head(self, n_classes: int) -> None:
        """Replace the head by a fresh one with ``n_classes`` outputs (uses the torch RNG)."""
        self.head = nn.Linear(self.embed_dim, n_classes)


class TabularMLP(EncoderHead):
    """``in_features -> hidden ReLU -> embed_dim ReLU -> head``; the embedding is
    ``body``'s output."""

    embedding_layer = "body"

    def __init__(self, in_features: int, n_classes: int = 2, hidden: int = 128, embed_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(),
                                  nn.Linear(hidden, embed_dim), nn.ReLU())
        self.head = nn.Linear(embed_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
