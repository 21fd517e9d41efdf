"""What a debiased model costs at inference once exported: the debiased head and model
(masks and P-ClArC's projection folded by :func:`pydebias.export`) against the plain,
undebiased ones in the same format, timed alternately in one run."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

import torch
from torch import nn

from .timing import alternating_medians


def _cases(seed: int):
    """(name, plain module, debiased module, input batch): a 1,280-d linear head with a
    per-class neuron mask (NeuronTune's) and a SmallCNN with that kind of head and a
    P-ClArC projection at its embedding."""
    from ..methods import PClArC
    from ..models import SmallCNN
    from ..nn import MaskedLinear

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(1280, 10)
    masked = MaskedLinear.from_linear(head, mask=(torch.rand(10, 1280, generator=g) > 0.1).float())
    yield "head 1280 -> 10", head.eval(), masked.eval(), torch.randn(1024, 1280, generator=g)
    model = SmallCNN(n_classes=10, in_channels=1).eval()
    x = torch.rand(256, 1, 28, 28, generator=g)
    c = (torch.rand(256, generator=g) < 0.3).numpy()
    x[torch.from_numpy(c), :, :4, :4] = 1.0
    p = PClArC(seed=seed)
    p.fit(model, torch.utils.data.TensorDataset(x, torch.randint(0, 10, (256,), generator=g)), concepts=c)
    p.model_.head = MaskedLinear.from_linear(p.model_.head, mask=(torch.rand(10, 64, generator=g) > 0.1).float())
    yield "SmallCNN, batch 256", model, p, x


def _quiet_onnx():
    """Session options whose threads sleep between calls: two sessions timed in turn
    otherwise spin-wait against each other on a small machine (measured: 0.98x and 1.47x
    for identical graphs in two runs)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    opts = ort.SessionOptions()
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def bench_export(formats: Sequence[str] = ("torchscript", "onnx"), repeat: int = 30, seed: int = 0) -> List[Dict]:
    """Per case and format: median latency of the exported plain and debiased modules and
    their ratio (bar: debiased <= 1.05x plain), the export check's largest output
    difference, and the unfolded debiased module in eager torch for comparison."""
    from ..export import export, load_exported

    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, plain, debiased, x in _cases(seed):
            eager = debiased.model_ if hasattr(debiased, "model_") else debiased  # hooks and masks as fitted
            with torch.no_grad():
                t_plain_eager, t_eager = alternating_medians([lambda: plain(x), lambda: eager(x)], repeat, warmup=3)
            rows.append({"kernel": "export", "impl": f"{name}: debiased, unfolded (eager torch)", "n": len(x),
                         "seconds": t_eager, "x_plain": t_eager / t_plain_eager,
                         "bar": f"{t_eager / t_plain_eager:.2f}x the plain module in eager torch"})
            for fmt in formats:
                a = export(plain, Path(d) / f"plain.{fmt}", format=fmt, example=x)
                b = export(debiased, Path(d) / f"debiased.{fmt}", format=fmt, example=x)
                run_a, run_b = load_exported(a["path"], fmt, _quiet_onnx()), load_exported(b["path"], fmt, _quiet_onnx())
                ta, tb = alternating_medians([lambda: run_a(x), lambda: run_b(x)], repeat, warmup=3)
                rows.append({"kernel": "export", "impl": f"{name}: debiased, {fmt}", "n": len(x), "seconds": tb,
                             "plain_seconds": ta, "x_plain": tb / ta, "max_abs_diff": b["max_abs_diff"],
                             "bar": f"{tb / ta:.2f}x the plain module in {fmt} (bar <= 1.05x); outputs within "
                                    f"{b['max_abs_diff']:.1e}"})
    return rows
