"""What every method shares: hyper-parameters in the constructor, ``fit`` returns a
model, learned state ends in an underscore (``head_``, ``report_``)."""
from __future__ import annotations

import inspect
from typing import Any, Dict

from ..data import EmbeddingSet


class Method:
    """Base class: ``get_params`` mirrors the constructor (scikit-learn style)."""

    def get_params(self) -> Dict[str, Any]:
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    @staticmethod
    def _check_set(s, name: str, need_groups: bool = False) -> EmbeddingSet:
        if not isinstance(s, EmbeddingSet):
            raise TypeError(f"{name}: expected an EmbeddingSet, got {type(s).__name__}")
        if len(s) == 0:
            raise ValueError(f"{name}: the set is empty")
        if need_groups and s.groups is None:
            raise ValueError(f"{name}: this method needs group labels; build the set with groups=")
        return s
