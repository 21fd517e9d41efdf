"""Ship a debiased head or model as plain layers: TorchScript, ``torch.export`` or ONNX.

:func:`fold` returns a copy in which every pydebias construct is folded into ordinary
layers (a :class:`~pydebias.nn.MaskedLinear`'s mask into its weight, a fitted
:class:`~pydebias.methods.PClArC`'s projection into the head), so the exported graph is
the one of the undebiased network: no inference overhead. :func:`export` folds, writes
the file under a temporary name, loads it back, checks its outputs against the input
module's (on the example batch and on a smaller one, so a fixed batch size would show),
and only then renames it into place.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Dict, Union

import torch
from torch import nn

from .nn import MaskedLinear
from .validation import check_choice

__all__ = ["FORMATS", "fold", "export", "load_exported"]

#: "torchscript" (``torch.jit.trace``, a ``.pt`` any libtorch loads), "export"
#: (``torch.export``, a ``.pt2`` program), "onnx" (the ``onnx`` package, checked with
#: onnxruntime; ``pip install "pydebias[export]"``)
FORMATS = ("torchscript", "export", "onnx")


def fold(module) -> nn.Module:
    """A copy of ``module`` (an ``nn.Module`` or a fitted ``PClArC``) in eval mode with every
    ``MaskedLinear`` replaced by its ``fold()`` and a P-ClArC projection folded into the
    head (``PClArC.fold()``; where it cannot fold, a max-pooled conv map, its hook stays
    and is exported as traced operations)."""
    from .methods.clarc import PClArC

    if isinstance(module, PClArC):
        if not hasattr(module, "model_"):
            raise RuntimeError("module: the PClArC is not fitted; call fit(model, train, concepts) first")
        try:
            module = module.fold()
        except ValueError:  # a max-pooled conv map: the hook is the only exact form
            module = module.model_
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module or a fitted PClArC, got {type(module).__name__}")
    if isinstance(module, MaskedLinear):
        return module.fold().eval()
    out = copy.deepcopy(module)
    for name, child in list(out.named_modules()):
        if isinstance(child, MaskedLinear):
            parent, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, leaf, child.fold())
    return out.eval()


def _example(module: nn.Module, example) -> torch.Tensor:
    if example is not None:
        x = torch.as_tensor(example)
        if x.dim() == 0 or x.shape[0] < 2:
            raise ValueError(f"example: expected a batch of at least 2 inputs (the batch size stays free), got "
                             f"shape {tuple(x.shape)}")
        return x
    if isinstance(module, nn.Linear):
        g = torch.Generator().manual_seed(0)
        return torch.randn(8, module.in_features, generator=g).to(module.weight.dtype)
    raise ValueError(f"example: {type(module).__name__} is not a linear head, so its input shape is unknown; pass "
                     "an example batch, e.g. export(model, path, example=x[:8])")


def _run(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def load_exported(path, format: str, onnx_options=None):
    """A callable ``f(x: Tensor) -> Tensor`` running the file ``export`` wrote;
    ``onnx_options``: an ``onnxruntime.SessionOptions`` for the ONNX session."""
    check_choice(format, "format", FORMATS)
    path = str(path)
    if format == "torchscript":
        m = torch.jit.load(path)
        return lambda x: _run(m, x)
    if format == "export":
        m = torch.export.load(path).module()
        return lambda x: _run(m, x)
    import onnxruntime as ort

    sess = ort.InferenceSession(path, sess_options=onnx_options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(sess.run(None, {name: x.detach().cpu().numpy()})[0])


def _write(module: nn.Module, x: torch.Tensor, tmp: str, format: str) -> None:
    batch = torch.export.Dim("batch", min=1)
    if format == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(module, (x,), check_trace=False), tmp)
    elif format == "export":
        torch.export.save(torch.export.export(module, (x,), dynamic_shapes=({0: batch},)), tmp)
    else:
        import importlib.util

        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f'format: "onnx" needs {", ".join(missing)}; pip install "pydebias[export]"')
        torch.onnx.export(module, (x,), tmp, input_names=["input"], output_names=["output"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)


def export(module, path: Union[str, os.PathLike], format: str = "torchscript", example=None, *,
           rtol: float = 1e-5, atol: float = 1e-5) -> Dict:
    """Fold ``module`` (:func:`fold`) and write it to ``path`` in ``format``
    (:data:`FORMATS`). ``example``: a batch of inputs (at least 2 rows; not needed for a
    linear head). Before ``path`` appears, the written file is loaded back and its outputs
    on ``example`` and on half of it must equal ``module``'s within ``rtol`` / ``atol``,
    else nothing is written and ``ValueError`` says by how much they differ. Returns
    ``{"path", "format", "max_abs_diff", "bytes", "folded"}``."""
    check_choice(format, "format", FORMATS)
    plain = fold(module)
    source = module if isinstance(module, nn.Module) else module.model_  # a PClArC: its hooked model
    x = _example(plain, example)
    was_training = source.training
    source.eval()  # compared in eval mode, as exported; the caller's mode is restored below
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = {"torchscript": ".pt", "export": ".pt2", "onnx": ".onnx"}[format]  # what each loader expects
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        _write(plain, x, str(tmp), format)
        run = load_exported(tmp, format)
        diff = 0.0
        for rows in (x, x[: max(1, len(x) // 2)]):
            got, ref = run(rows), _run(source, rows)
            if got.shape != ref.shape or not torch.allclose(got.to(ref.dtype), ref, rtol=rtol, atol=atol):
                bad = float((got.to(ref.dtype) - ref).abs().max()) if got.shape == ref.shape else float("inf")
                raise ValueError(f"module: the exported {format} file gives outputs {bad:.3g} away from the "
                                 f"module's (shape {tuple(got.shape)} vs {tuple(ref.shape)}; rtol={rtol}, "
                                 f"atol={atol}); nothing was written to {path}")
            diff = max(diff, float((got.to(ref.dtype) - ref).abs().max()))
        os.replace(tmp, path)
    finally:
        source.train(was_training)
        if tmp.exists():
            tmp.unlink()
    n_masked = sum(isinstance(m, MaskedLinear) for m in source.modules())
    return {"path": str(path), "format": format, "max_abs_diff": diff, "bytes": path.stat().st_size,
            "folded": {"masked_linear": n_masked, "pclarc": not isinstance(module, nn.Module)}}
