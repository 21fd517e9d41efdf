"""The on-disk cache of the built-ins' trained backbones and embeddings.

Built-in backbones (:mod:`pydebias.models`) train on the CPU in seconds to minutes; the
result is cached under :func:`cache_root`, keyed by data set, parameters, seed and
:data:`CODE_VERSION`, and written atomically (see docs/data.md, "Backbones").
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional

import torch

__all__ = ["cache_root", "cache_key", "load_cache", "save_cache"]

#: Bump when the training or data-generation code changes, so old caches are not reused.
CODE_VERSION = "backbones-1"


def cache_root(cache_dir: Optional[str] = None) -> str:
    """``cache_dir`` if given, else ``$PYDEBIAS_CACHE``, else ``~/.cache/pydebias``."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    env = os.environ.get("PYDEBIAS_CACHE")
    return env if env else os.path.join(os.path.expanduser("~"), ".cache", "pydebias")


def cache_key(name: str, params: Dict, seed: int, version: str = CODE_VERSION) -> str:
    """sha256 of (data set name, its parameters, seed, code version), as hex."""
    blob = json.dumps({"name": name, "params": params, "seed": int(seed), "version": version},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_cache(path: str) -> Optional[Dict]:
    """The cached dict at ``path``, or None when absent or unreadable (then it is rebuilt)."""
    if not os.path.exists(path):
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a truncated or foreign file: ignore it, it will be overwritten
        return None


def save_cache(path: str, obj: Dict) -> None:
    """Write ``obj`` (tensors, numbers, strings, dicts/lists of them) atomically."""
    import io

    from ..results import write_atomic

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_atomic(path, buf.getvalue())
