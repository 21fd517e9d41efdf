"""The one list of methods: it feeds the CLI, the comparison and report, and the
README's methods table (``pydebias methods`` prints it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping

from .base import Method
from .baselines import AFR, DFR, ERM, JTT, ClassBalanced
from .neurontune import NeuronTune
from .nsf import NSF

__all__ = ["MethodSpec", "REGISTRY", "methods_markdown"]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: ``name`` for the CLI and JSON, ``label`` for tables, the class
    and the constructor parameters this entry fixes (``retrain_on="val"``)."""

    name: str
    label: str
    cls: type
    summary: str
    reads_groups: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    family: str = "embedding"  # "embedding": fit(train, val, head=); "model": fit(model, train)

    def make(self, **overrides: Any) -> Method:
        """A new instance with this entry's parameters, then ``overrides`` (e.g. ``seed``)."""
        return self.cls(**{**self.params, **overrides})

    @property
    def guarded(self) -> bool:
        """Whether the method runs the do-no-harm guard (and may return the ERM head)."""
        return "guard" in self.make().get_params()


REGISTRY: Dict[str, MethodSpec] = {s.name: s for s in (
    MethodSpec("erm", "ERM", ERM, "plain last-layer training (the built-ins use their backbone's own head)"),
    MethodSpec("classbalanced", "ClassBalanced", ClassBalanced,
               "class-balanced last-layer retraining on train: NeuronTune's retraining without its masks"),
    MethodSpec("classbalanced-val", "ClassBalanced (val)", ClassBalanced,
               "the same, retrained on val", params={"retrain_on": "val"}),
    MethodSpec("jtt", "JTT", JTT, "up-weights the training errors of a briefly trained head (every class × error "
               "cell weighs the same), retrains"),
    MethodSpec("afr", "AFR", AFR, "retrains from the ERM head on val with weights exp(-γ p(y|x)), γ picked "
               "label-free on held-out val rows"),
    MethodSpec("neurontune", "NeuronTune", NeuronTune,
               "zeroes the neurons whose median is higher on val's errors than on its correct samples, "
               "retrains on train"),
    MethodSpec("neurontune-val", "NeuronTune (val)", NeuronTune,
               "the same, retrained on val's identification rows", params={"retrain_on": "val"}),
    MethodSpec("nsf", "NSF", NSF, "identify, neutralize, eliminate (element-wise transform), update; "
               "folded into one linear head"),
    MethodSpec("dfr", "DFR", DFR, "group-balanced last-layer retraining on val (the reference)", reads_groups=True),
)}


def methods_markdown() -> str:
    """The README's methods table, from the registry."""
    rows = ["| method | CLI name | what it does | reads group labels |", "| --- | --- | --- | --- |"]
    for s in REGISTRY.values():
        summary = s.summary.replace("|", "\\|")  # a literal bar inside a table cell
        rows.append(f"| {s.label} | `{s.name}` | {summary} | {'**yes**' if s.reads_groups else 'no'} |")
    return "\n".join(rows)
