"""The one model protocol: an encoder that gives the embedding, a linear head on it, and
named layers for hooks. Embedding-level methods read ``embed(x)``; model-level methods
(RR-ClArC, MaskTune, BLADE) hook ``layer(name)`` and fine-tune the whole network."""
from __future__ import annotations

from typing import List

import torch
from torch import nn


class EncoderHead(nn.Module):
    """Base class of models with ``forward(x) = head(embed(x))``.

    Subclasses define :meth:`embed` (input -> (N, D) embedding), a ``head`` attribute
    (``nn.Linear(D, C)``) and ``embedding_layer``, the name of the submodule whose output
    is the embedding (what :func:`pydebias.data.extract_embeddings` hooks).
    """

    embedding_layer: str = ""
    #: a conv layer whose output goes through a global average pool straight into ``head``
    #: ("" if none): RR-ClArC's closed-form gradient applies there and at ``embedding_layer``
    pooled_layer: str = ""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__}: define embed(x)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    @property
    def embed_dim(self) -> int:
        return self.head.in_features

    @property
    def n_classes(self) -> int:
        return self.head.out_features

    def layer_names(self) -> List[str]:
        """Names of every submodule, as ``named_modules()`` gives them."""
        return [name for name, _ in self.named_modules() if name]

    def layer(self, name: str) -> nn.Module:
        """The submodule called ``name`` (for forward / backward hooks)."""
        return find_layer(self, name)


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """``model``'s submodule called ``name`` (as ``named_modules()`` names it)."""
    modules = dict(model.named_modules())
    if not isinstance(name, str) or not name or name not in modules:
        raise ValueError(f"layer: {type(model).__name__} has no layer {name!r}; "
                         f"layers are {[n for n in modules if n]}")
    return modules[name]
