"""Checks at the boundary, shared by every public entry point.

Each check raises ``TypeError`` / ``ValueError`` whose message starts with the argument's
name, says what was expected and what came, and what to do. Internal code calls these
once, where user data enters, and trusts its own values after that.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from . import _arrays

FLOAT_DTYPES = "float32, float64, float16 or bfloat16"


def check_features(x, name: str = "features") -> None:
    """A 2-D numpy array, memmap or torch tensor of a supported float dtype."""
    if not (_arrays.is_tensor(x) or isinstance(x, np.ndarray)):
        raise TypeError(f"{name}: expected a numpy array, np.memmap or torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected shape (rows, neurons), got {tuple(x.shape)}")
    if not _arrays.supported_dtype(x.dtype):
        raise TypeError(f"{name}: dtype {x.dtype} is not supported; use {FLOAT_DTYPES}")


def check_ids(a, name: str, n: int, upper: Optional[int] = None, upper_name: Optional[str] = None) -> np.ndarray:
    """Integer ids (class, group or concept labels), one per row: int64 numpy (N,).

    Booleans count as 0/1; floats are rejected, integer-valued or not (cast them with
    ``.astype(int)``), so every entry point accepts the same inputs. ``upper``: ids must
    lie in ``[0, upper)``, ``upper_name`` says where that bound comes from.
    """
    if upper is not None and (isinstance(upper, bool) or not isinstance(upper, (int, np.integer)) or upper < 0):
        raise ValueError(f"{upper_name or 'upper'}: expected a non-negative integer, got {upper!r}")
    arr = _arrays.to_numpy(a)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one per row of features), got {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name}: expected integer ids, got dtype {arr.dtype}; cast with .astype(int)")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name}: ids must be non-negative, found {int(arr.min())}")
    if upper is not None and arr.size and arr.max() >= upper:
        bound = f"{upper_name} = {upper}" if upper_name else str(upper)
        raise ValueError(f"{name}: ids must lie in [0, {upper}) ({bound}), found {int(arr.max())}")
    return arr


def count_ids(ids: np.ndarray, given: Optional[int], name: str, given_name: str) -> int:
    """The number of distinct id values: ``given`` when set (checked against ``ids``),
    else ``max + 1``."""
    seen = int(ids.max()) + 1 if ids.size else 0
    if given is None:
        return seen
    if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 0:
        raise ValueError(f"{given_name}: expected a non-negative integer, got {given!r}")
    if seen > given:
        raise ValueError(f"{name}: found id {seen - 1} but {given_name}={given}")
    return int(given)


def check_correct(correct, n: int) -> np.ndarray:
    """Per-row booleans (prediction == label) as a numpy bool array."""
    ok = _arrays.to_numpy(correct)
    if ok.shape != (n,):
        raise ValueError(f"correct: expected shape ({n},), got {ok.shape}")
    if ok.dtype != np.bool_ and not np.isin(ok, (0, 1)).all():
        raise ValueError("correct: expected booleans (prediction == label)")
    return ok.astype(bool, copy=False)


def check_embedding_set(s, name: str, need_groups: bool = False):
    """A non-empty :class:`pydebias.EmbeddingSet` (with group labels when needed)."""
    # duck-typed: the data layer imports this module, not the other way round
    if not all(hasattr(s, a) for a in ("features", "labels", "n_classes", "n_features", "subset")):
        raise TypeError(f"{name}: expected an EmbeddingSet, got {type(s).__name__}")
    if len(s) == 0:
        raise ValueError(f"{name}: the set is empty")
    if need_groups and s.groups is None:
        raise ValueError(f"{name}: this method needs group labels; build the set with groups=")
    return s


def check_linear_head(head, name: str = "head", n_features: Optional[int] = None,
                      n_classes: Optional[int] = None) -> torch.nn.Linear:
    """A ``torch.nn.Linear`` head over ``n_features`` inputs with at least ``n_classes`` outputs."""
    if not isinstance(head, torch.nn.Linear):
        raise TypeError(f"{name}: expected a torch.nn.Linear head (e.g. ERM().fit(train)), "
                        f"got {type(head).__name__}")
    if n_features is not None and head.in_features != n_features:
        raise ValueError(f"{name}: takes {head.in_features} features, the set has {n_features}")
    if n_classes is not None and head.out_features < n_classes:
        raise ValueError(f"{name}: has {head.out_features} outputs, the set has {n_classes} classes")
    return head


def check_fraction(value, name: str, low_open: bool = False) -> float:
    """A finite fraction in [0, 1) (or (0, 1) with ``low_open``)."""
    v = float(value)
    ok = (0 < v < 1) if low_open else (0 <= v < 1)
    if not ok:
        raise ValueError(f"{name}: expected a fraction in {'(0' if low_open else '[0'}, 1), got {value}")
    return v


def check_choice(value, name: str, choices: Tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
