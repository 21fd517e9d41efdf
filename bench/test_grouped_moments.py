"""pytest-benchmark suite for grouped moments: ``pytest bench/ --benchmark-only``.

Each implementation is timed beside one read of the same X (``X.sum(0)``); compare the
rows of one run, never across runs. ``PYDEBIAS_BENCH_ROWS`` sets N (default 500,000).
"""
import os

import numpy as np
import pytest
import torch

from pydebias import neuron_stats
from pydebias.tools.bench_kernels import numpy_grouped_moments, torch_grouped_moments

N = int(os.environ.get("PYDEBIAS_BENCH_ROWS", "500000"))
M, G = 512, 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, M), dtype=np.float32)
    g = rng.integers(0, G, N)
    return x, g


def test_one_read(benchmark, data):
    benchmark.group = "grouped moments"
    benchmark(lambda: data[0].sum(0))


def test_k1_cpp(benchmark, data):
    benchmark.group = "grouped moments"
    x, g = data
    benchmark(lambda: neuron_stats(x, groups=g, n_groups=G, backend="cpp", quantiles=()))


def test_k1_torch_reference(benchmark, data):
    benchmark.group = "grouped moments"
    x, g = data
    benchmark.pedantic(lambda: neuron_stats(torch.from_numpy(x), groups=g, n_groups=G, backend="torch", quantiles=()), rounds=3)


def test_numpy_baseline(benchmark, data):
    benchmark.group = "grouped moments"
    benchmark.pedantic(lambda: numpy_grouped_moments(*data, G), rounds=3)


def test_torch_baseline(benchmark, data):
    benchmark.group = "grouped moments"
    x, g = data
    benchmark.pedantic(lambda: torch_grouped_moments(torch.from_numpy(x), torch.from_numpy(g), G), rounds=3)
