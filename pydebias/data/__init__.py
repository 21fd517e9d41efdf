"""Data: the EmbeddingSet container and the built-in benchmarks."""
from .embedding_set import EmbeddingSet
from .planted import planted

__all__ = ["EmbeddingSet", "planted", "BUILTINS", "load"]

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
