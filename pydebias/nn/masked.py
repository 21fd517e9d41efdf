"""fused masked linear: ``(x ⊙ m) Wᵀ + b`` without materialising ``x ⊙ m``.

Masks are input-neuron masks ``m`` (M,) — neuron ``i`` is silenced for every class —
or per-class masks (C, M) acting on the weights ``W[y, i]`` (NeuronTune's ``per_class`` mode). Both are
folded into the weights: ``(x ⊙ m) Wᵀ = x (W ⊙ m)ᵀ``, and for per-class masks
``logit_c = Σ_i x_i m_ci W_ci = x (W ⊙ m)ᵀ`` as well, so a masked head is a plain
linear layer with masked weights. ``K`` masks at once become one GEMM against the
stacked weight (K·C, M) and give logits (N, K, C).

Backends (``backend=``):

* ``"cpp"`` / ``"auto"`` on the CPU: fold the mask into W (C·M multiplies, nothing next
  to the N·M·C of the product) and call torch's BLAS GEMM (MKL / OpenBLAS / oneDNN via
  ``torch.nn.functional.linear``). This is the CPU kernel on purpose: the work left
  after folding is a dense GEMM, and a hand-written C++ loop in ``pydebias._C`` would
  have to re-implement BLAS register blocking, packing and threading only to lose to
  it; the bound on the CPU is one read of x, which BLAS already reaches. The path is
  exact for 0/1 masks (every product ``x_i·(W_ci·m_ci)`` equals ``(x_i·m_i)·W_ci``
  bit for bit), differentiable, and needs no compiled extension.
* ``"triton"``: ``pydebias.kernels.masked_linear`` applies the masks to the W tile
  in-kernel (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``). It has no
  backward, so ``"auto"`` takes it only for CUDA inputs when no gradient is needed
  and otherwise runs the folded GEMM (cuBLAS).
* ``"torch"``: :func:`pydebias.reference.masked_linear`, literally ``(x * m) @ W.T + b``.

Masks may be boolean, integer or real-valued (finite). With real values (partial
scaling, e.g. the 0.2–1.0 ablation of the NeuronTune paper) the fold is the same
linear map but each product is rounded once in a different place, so results agree
with the reference to float rounding rather than bit for bit.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
import torch.nn.functional as F

from .. import backends, reference

__all__ = ["MaskedLinear", "masked_linear", "masked_linear_many", "fold_masks"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_weight(weight, bias):
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight: expected a torch.Tensor of shape (C, M), got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected shape (C, M) = (classes, neurons), got {tuple(weight.shape)}")
    if weight.dtype not in _FLOATS:
        raise TypeError(f"weight: dtype {weight.dtype} is not a float type")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias: expected a torch.Tensor of shape ({weight.shape[0]},) or None, "
                            f"got {type(bias).__name__}")
        if tuple(bias.shape) != (weight.shape[0],):
            raise ValueError(f"bias: expected shape ({weight.shape[0]},) (one per class of weight), "
                             f"got {tuple(bias.shape)}")


def _check_input(x, weight, name: str = "x"):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name}: dtype {x.dtype} is not supported; use float32, float64, float16 or bfloat16")
    if x.is_meta:
        raise ValueError(f"{name}: a tensor on the meta device has no data; materialise it (e.g. .to_empty()) first")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"{name}: expected last dimension {weight.shape[1]} (= weight.shape[1], the "
                         f"number of neurons), got shape {tuple(x.shape)}")


def _as_mask(mask, name: str) -> torch.Tensor:
    m = torch.as_tensor(mask)
    if m.dtype == torch.bool or not m.is_floating_point():
        m = m.to(torch.float32)
    if not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name}: contains NaN or inf; masks must be finite (0/1, or real scale factors)")
    return m


def check_mask(mask, n_classes: int, n_in: int, name: str = "mask") -> Optional[torch.Tensor]:
    """A single mask as a float tensor: None, input mask (M,) or per-class masks (C, M)."""
    if mask is None:
        return None
    m = _as_mask(mask, name)
    if tuple(m.shape) not in ((n_in,), (n_classes, n_in)):
        raise ValueError(f"{name}: expected shape ({n_in},) for an input-neuron mask or ({n_classes}, {n_in}) "
                         f"for per-class masks (classes, neurons), got {tuple(m.shape)}")
    return m


def check_masks(masks, n_classes: int, n_in: int, name: str = "masks") -> torch.Tensor:
    """K masks as a float tensor: (K, M) input masks or (K, C, M) per-class masks, K >= 1."""
    if masks is None:
        raise ValueError(f"{name}: expected (K, {n_in}) input masks or (K, {n_classes}, {n_in}) "
                         "per-class masks, got None")
    m = _as_mask(masks, name)
    ok = (m.dim() == 2 and m.shape[1] == n_in) or (m.dim() == 3 and tuple(m.shape[1:]) == (n_classes, n_in))
    if not ok:
        raise ValueError(f"{name}: expected shape (K, {n_in}) for K input-neuron masks or (K, {n_classes}, {n_in}) "
                         f"for K per-class masks, got {tuple(m.shape)}")
    if m.shape[0] == 0:
        raise ValueError(f"{name}: no masks (K = 0); pass at least one")
    return m


def fold_masks(weight: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Stacked masked weights (K·C, M) for masks (K, M) or (K, C, M): row ``k*C + c`` is ``W[c] ⊙ m[k(, c)]``."""
    m = masks.to(device=weight.device, dtype=weight.dtype)
    if m.dim() == 2:
        m = m[:, None, :]
    return (weight[None] * m).reshape(-1, weight.shape[1])


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _out_dtype(x, weight):
    return torch.promote_types(x.dtype, weight.dtype)


def _linear_chunked(x2, w, bias, out_dtype, chunk_rows: int = 1 << 16):
    """F.linear in the weight's dtype; half inputs are widened one row chunk at a time."""
    if x2.dtype == w.dtype:
        return F.linear(x2, w, bias).to(out_dtype)
    out = torch.empty(x2.shape[0], w.shape[0], dtype=out_dtype, device=x2.device)
    for s in range(0, x2.shape[0], chunk_rows):
        out[s:s + chunk_rows] = F.linear(x2[s:s + chunk_rows].to(w.dtype), w, bias)
    return out


def masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  mask=None, *, backend: str = "auto") -> torch.Tensor:
    """``(x ⊙ m) Wᵀ + b`` for ``x`` (..., M), ``weight`` (C, M): logits (..., C).

    ``mask``: None, an input-neuron mask (M,) or per-class masks (C, M) acting on
    ``W[y, i]``. The result has the promoted dtype of ``x`` and ``weight``; half
    inputs accumulate in float32.
    """
    _check_weight(weight, bias)
    _check_input(x, weight)
    m = check_mask(mask, weight.shape[0], weight.shape[1])
    lead, n_in = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, n_in)
    which = backends.resolve_linear(backend, x, _needs_grad(x, weight, bias, m))
    out_dtype = _out_dtype(x, weight)
    if which == "torch":
        out = reference.masked_linear(x2, weight, bias, m).to(out_dtype)
    elif which == "triton":
        from ..kernels import masked_linear as triton_impl
        masks = None if m is None else m[None]
        out = triton_impl.masked_linear(x2, weight, bias, masks, per_class=m is not None and m.dim() == 2,
                               out_dtype=out_dtype)[:, 0]
    else:
        ct = reference._compute_dtype(x.dtype, weight.dtype)
        w = weight.to(ct)
        if m is not None:
            w = w * m.to(device=w.device, dtype=ct)  # (M,) broadcasts over classes; (C, M) is per class
        b = None if bias is None else bias.to(ct)
        out = _linear_chunked(x2, w, b, out_dtype)
    return out.reshape(*lead, weight.shape[0])


def masked_linear_many(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                       masks=None, *, backend: str = "auto") -> torch.Tensor:
    """Logits of K masked heads at once: ``x`` (..., M) → (..., K, C).

    ``masks``: (K, M) input-neuron masks or (K, C, M) per-class masks. On the CPU this
    is one GEMM against the stacked weight (K·C, M) (:func:`fold_masks`); the Triton
    kernel reads each x tile once for all K masks.
    """
    _check_weight(weight, bias)
    _check_input(x, weight)
    m = check_masks(masks, weight.shape[0], weight.shape[1])
    lead, n_in = x.shape[:-1], x.shape[-1]
    n_masks, n_cls = m.shape[0], weight.shape[0]
    x2 = x.reshape(-1, n_in)
    which = backends.resolve_linear(backend, x, _needs_grad(x, weight, bias, m))
    out_dtype = _out_dtype(x, weight)
    if which == "torch":
        out = torch.stack([reference.masked_linear(x2, weight, bias, m[k]) for k in range(n_masks)],
                          dim=1).to(out_dtype)
    elif which == "triton":
        from ..kernels import masked_linear as triton_impl
        out = triton_impl.masked_linear(x2, weight, bias, m, per_class=m.dim() == 3, out_dtype=out_dtype)
    else:
        ct = reference._compute_dtype(x.dtype, weight.dtype)
        w = fold_masks(weight.to(ct), m)
        b = None if bias is None else bias.to(ct).repeat(n_masks)
        out = _linear_chunked(x2, w, b, out_dtype)
    return out.reshape(*lead, n_masks, n_cls)


class MaskedLinear(nn.Module):
    """A linear head whose inputs (or per-class weights) are masked: ``(x ⊙ m) Wᵀ + b``.

    ``mask`` is None (a plain linear layer), an input-neuron mask (M,) or per-class
    masks (C, M) and is kept as the buffer ``mask`` (saved in the state dict, moved
    with ``.to()``, never trained). The masked weights get zero gradient, so training
    a ``MaskedLinear`` keeps the masked neurons silent (NeuronTune step 4). ``fold()``
    returns the equivalent plain ``nn.Linear`` for zero-overhead inference.
    """

    def __init__(self, in_features: int, out_features: int, mask=None, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        lin = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.weight = lin.weight
        self.bias = lin.bias
        self.register_buffer("mask", None)
        self.set_mask(mask)

    def set_mask(self, mask) -> "MaskedLinear":
        """Replace the mask: None, (M,) or (C, M); stored as float in the weight's dtype and device."""
        m = check_mask(mask, self.out_features, self.in_features)
        self.mask = None if m is None else m.to(device=self.weight.device, dtype=self.weight.dtype)
        return self

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask=None) -> "MaskedLinear":
        """A ``MaskedLinear`` with a copy of ``linear``'s weight and bias and the given mask."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        out = cls(linear.in_features, linear.out_features, mask=None, bias=linear.bias is not None,
                  device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(linear.weight)
            if linear.bias is not None:
                out.bias.copy_(linear.bias)
        return out.set_mask(mask)

    def masked_weight(self) -> torch.Tensor:
        return self.weight if self.mask is None else self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_linear(x, self.weight, self.bias, self.mask)

    def fold(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight ``W ⊙ m``: identical outputs for 0/1 masks."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            lin.weight.copy_(self.masked_weight())
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The mask's shape (none, (M,) or (C, M)) follows the state dict being loaded.
        key = prefix + "mask"
        if key in state_dict:
            m = check_mask(state_dict[key], self.out_features, self.in_features, name=key)
            self._buffers["mask"] = torch.empty(m.shape, dtype=self.weight.dtype, device=self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        kind = "none" if self.mask is None else ("input" if self.mask.dim() == 1 else "per-class")
        kept = "" if self.mask is None else f", kept={int((self.mask != 0).sum())}/{self.mask.numel()}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, mask={kind}{kept}")
