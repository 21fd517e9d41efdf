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
    """A 2-D numpy array, memmap or torch tensor of a supported float dtype, with data."""
    if not (_arrays.is_tensor(x) or isinstance(x, np.ndarray)):
        raise TypeError(f"{name}: expected a numpy array, np.memmap or torch.Tensor, got {type(x).__name__}")
    if _arrays.is_tensor(x) and x.is_meta:
        raise ValueError(f"{name}: a tensor on the meta device has no data; materialise it (e.g. .to_empty()) first")
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
    """The id count (ids lie in ``[0, count)``): ``given`` when set (checked against ``ids``),
    else ``max + 1``."""
    seen = int(ids.max()) + 1 if ids.size else 0
    if given is None:
        return seen
    if isinstance(given, bool) or not isinstance(given, (int, np.integer)) or given < 0:
        raise ValueError(f"{given_name}: expected a non-negative integer, got {given!r}")
    if seen > given:
        raise ValueError(f"{name}: found id {seen - 1} but {given_name}={given}")
    return int(given)


_SINGULAR = {"groups": "group", "classes": "class"}
#: tables sized by an id count may always take this much (small inputs, many classes)
TABLE_FLOOR_BYTES = 1 << 30
#: and otherwise at most this multiple of the input's bytes
TABLE_INPUT_MULTIPLE = 16


def check_table(count: int, bytes_per_id: int, input_bytes: int, name: str, count_name: str) -> None:
    """Refuse an id count (``name``: "groups" or "classes") whose per-id tables would dwarf
    the input: a sparse id such as 10**12, or ``n_groups=10**9`` for 300 rows, would
    otherwise ask for gigabytes."""
    need = int(count) * int(bytes_per_id)
    allowed = max(TABLE_FLOOR_BYTES, TABLE_INPUT_MULTIPLE * int(input_bytes))
    if need > allowed:
        raise ValueError(f"{count_name}: {count} {name} would need {need / 2**30:.3g} GiB of per-{_SINGULAR[name]} "
                         f"tables for {input_bytes / 2**20:.3g} MiB of input (at most {allowed / 2**30:.3g} GiB); "
                         f"ids must be dense: remap them with np.unique(ids, return_inverse=True)")


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


def check_number(value, name: str, low=None, high=None, *, integer: bool = False, low_open: bool = False,
                 high_open: bool = False, finite: bool = True):
    """A real number (an ``int`` with ``integer``) in the given range; NaN is never one,
    ±inf only with ``finite=False``. Returns it as ``int`` or ``float``."""
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.integer,
                                                                                      np.floating))
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"{name}: expected {kind}, got {value!r}")
    v = int(value) if integer else float(value)
    if v != v or (finite and v in (float("inf"), float("-inf"))):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{name}: expected {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v >= high if high_open else v > high):
        raise ValueError(f"{name}: expected {'<' if high_open else '<='} {high}, got {value!r}")
    return v


def check_fraction(value, name: str, low_open: bool = False) -> float:
    """A fraction in [0, 1) (or (0, 1) with ``low_open``)."""
    return check_number(value, name, 0.0, 1.0, low_open=low_open, high_open=True)


def check_chunk_rows(chunk_rows, name: str = "chunk_rows"):
    """None (a default size) or a positive number of rows."""
    return None if chunk_rows is None else check_number(chunk_rows, name, 1, integer=True)


def check_choice(value, name: str, choices: Tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
