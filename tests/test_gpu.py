"""The Triton kernels on CUDA tensors against the C++ kernels (skipped without a CUDA
device; ``bench/gpu.sh`` runs them there with ``TRITON_INTERPRET=0``), and the GPU bench
harness, which runs here under Triton's CPU interpreter."""
import os

import numpy as np
import pytest
import torch

from pydebias import grouped_quantiles, neuron_stats
from pydebias.nn.masked import masked_linear_many
from pydebias.tools.bench_gpu import bench_gpu

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
on_cuda = pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED,
                             reason="needs a CUDA device and TRITON_INTERPRET=0 (bench/gpu.sh)")


def _rows(kind, n=20_000, m=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m)).astype(np.float32)
    if kind == "ties":
        x = np.round(x * 2) / 2
    elif kind == "offset":
        x = x * 1e-2 + 1e6
    return x, rng.integers(0, 5, n), rng.random(n) < 0.7


@on_cuda
@pytest.mark.parametrize("kind", ["normal", "ties", "offset"])
def test_statistics_on_cuda_equal_the_cpu_kernels(kind):
    x, y, ok = _rows(kind)
    ref = neuron_stats(x, y, ok, backend="cpp", quantiles=(0.5, 0.9))
    got = neuron_stats(torch.from_numpy(x).cuda(), y, ok, backend="triton", quantiles=(0.5, 0.9))
    for name in ("count", "min", "max"):
        np.testing.assert_array_equal(getattr(got, name), getattr(ref, name))
    for q in (0.5, 0.9):
        np.testing.assert_array_equal(got.quantile(q), ref.quantile(q))
    np.testing.assert_allclose(got.mean, ref.mean, rtol=1e-9)
    np.testing.assert_allclose(got.var, ref.var, rtol=1e-6)
    g = 2 * y + ok
    np.testing.assert_array_equal(grouped_quantiles(torch.from_numpy(x).cuda(), g, backend="triton"),
                                  grouped_quantiles(x, g, backend="cpp"))


@on_cuda
def test_masked_linear_on_cuda_equals_folded_gemms():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(5000, 96, generator=g), torch.randn(7, 96, generator=g), torch.randn(7, generator=g)
    masks = (torch.rand(4, 96, generator=g) > 0.2).float()
    got = masked_linear_many(x.cuda(), w.cuda(), b.cuda(), masks.cuda(), backend="triton").cpu()
    want = torch.stack([torch.nn.functional.linear(x, w * mk, b) for mk in masks], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not INTERPRETED, reason="the harness check runs the kernels under the CPU interpreter")
def test_gpu_bench_harness_under_the_interpreter():
    rows = bench_gpu(device="cpu", n=512, m=16, classes=3, k_masks=2, repeat=1)
    assert [r["kernel"] for r in rows] == ["device copy", "grouped moments", "grouped medians", "masked linear"]
    assert rows[0]["bytes_per_s"] > 0
    assert all(r["fraction_of_copy_bandwidth"] > 0 for r in rows[1:3]) and rows[3]["fraction_of_cublas"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_bench_says_when_there_is_no_cuda(capsys):
    from pydebias.tools.cli import main

    with pytest.raises(RuntimeError, match="no CUDA device"):
        bench_gpu()
    assert main(["bench", "--gpu"]) == 2 and "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the "instead" modes exclude each other
        main(["bench", "--gpu", "--distributed"])
    assert "not allowed with argument" in capsys.readouterr().err
