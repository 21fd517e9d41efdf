"""The GPU check, sized for a short lease: the Triton kernels on CUDA tensors as fractions
of what the device's memory and cuBLAS deliver, measured in one run.

- grouped moments and exact grouped medians (the statistics pass; ``neuron_stats`` and
  ``grouped_quantiles`` with ``backend="triton"``) against a device-to-device copy of the
  same tensor: a copy reads and writes every byte, so ``2 x bytes / copy time`` is the
  bandwidth the device reaches, and a kernel that reads X once at that bandwidth scores 1;
- the masked linear head (K masks at once) against ``torch.nn.functional.linear`` on the
  same rows with each mask folded into the weight (cuBLAS; K GEMMs).

``bench/gpu.sh`` runs it (``pydebias bench --gpu``) with the GPU tests; on a machine
without CUDA it says so. With ``device="cpu"`` and ``TRITON_INTERPRET=1`` the same code
runs on tiny sizes (how the tests check the harness)."""
from __future__ import annotations

from typing import Callable, Dict, List

import torch

from .timing import median_time


def _timed(fn: Callable, device: str, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up, synchronised on CUDA."""
    return median_time(fn, repeat, 1, torch.cuda.synchronize if device.startswith("cuda") else None)


def bench_gpu(device: str = "cuda", n: int = 4_000_000, m: int = 512, classes: int = 10, k_masks: int = 16,
              repeat: int = 10) -> List[Dict]:
    """Rows for the statistics kernels (fraction of copy bandwidth) and the masked head
    (fraction of cuBLAS throughput) on ``device``; raises ``RuntimeError`` without CUDA
    when ``device`` asks for it."""
    from ..stats import grouped_quantiles, neuron_stats

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--gpu: no CUDA device is visible (torch.cuda.is_available() is False); run it on a "
                           "GPU machine")
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, m, generator=g).to(device)
    y = torch.randint(0, classes, (n,), generator=g).to(device)
    ok = (torch.rand(n, generator=g) < 0.8).to(device)
    nbytes = x.numel() * x.element_size()
    t_copy = _timed(lambda: x.clone(), device, repeat)
    bandwidth = 2 * nbytes / t_copy
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu (Triton interpreter)"
    rows = [{"kernel": "device copy", "impl": "x.clone()", "n": n, "seconds": t_copy, "bytes_per_s": bandwidth,
             "device": name}]
    groups = (2 * y + ok.long()).cpu().numpy()
    for what, fn in (("grouped moments", lambda: neuron_stats(x, y, ok, backend="triton", quantiles=())),
                     ("grouped medians", lambda: grouped_quantiles(x, groups, 2 * classes, (0.5,),
                                                                   backend="triton"))):
        t = _timed(fn, device, repeat)
        rows.append({"kernel": what, "impl": "triton", "n": n, "seconds": t, "device": name,
                     "fraction_of_copy_bandwidth": nbytes / t / bandwidth,
                     "bar": f"{nbytes / t / bandwidth:.2f} of the copy bandwidth (one read of X = 1)"})
    from ..nn.masked import masked_linear_many

    w = torch.randn(classes, m, generator=g).to(device)
    b = torch.randn(classes, generator=g).to(device)
    masks = (torch.rand(k_masks, m, generator=g) > 0.1).float().to(device)
    xs = x[: min(n, 1_000_000)]
    t_triton = _timed(lambda: masked_linear_many(xs, w, b, masks, backend="triton"), device, repeat)
    folded = [w * mk for mk in masks]
    t_cublas = _timed(lambda: [torch.nn.functional.linear(xs, wk, b) for wk in folded], device, repeat)
    rows.append({"kernel": "masked linear", "impl": f"triton, {k_masks} masks", "n": len(xs), "seconds": t_triton,
                 "device": name, "fraction_of_cublas": t_cublas / t_triton,
                 "bar": f"{t_cublas / t_triton:.2f} of cuBLAS's throughput (K folded GEMMs)"})
    return rows
