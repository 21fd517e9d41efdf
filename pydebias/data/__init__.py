"""Data: the EmbeddingSet container and the built-in benchmarks."""
from .embedding_set import EmbeddingSet
from .extract import extract_embeddings
from .planted import planted
from .standard import (StandardSplit, load_celeba, load_civilcomments, load_multinli,
                       load_waterbirds, to_embedding_set)

__all__ = ["EmbeddingSet", "extract_embeddings", "planted", "StandardSplit", "load_celeba",
           "load_civilcomments", "load_multinli", "load_waterbirds", "to_embedding_set", "BUILTINS", "load", "availability"]

BUILTINS = {
    "planted": "synthetic embeddings with known spurious neurons (any size)",
}


def load(name: str, seed: int = 0, **params):
    """Load a built-in benchmark by name; returns a dict with 'train', 'val', 'test'."""
    if name not in BUILTINS:
        raise ValueError(f"name: unknown data set {name!r}; built-ins are {sorted(BUILTINS)}")
    if name == "planted":
        return planted(seed=seed, **params)
    raise AssertionError(name)


def availability(name: str):
    """(available, reason) for a built-in: whether its source data is installed."""
    if name not in BUILTINS:
        raise ValueError(f"name: unknown data set {name!r}; built-ins are {sorted(BUILTINS)}")
    return True, ""
