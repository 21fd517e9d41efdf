"""The native float16/bfloat16 -> float32 widening and the predict path that uses it."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pydebias import _arrays, backends
from pydebias.data import planted
from pydebias.methods import ERM
from pydebias.metrics import _native_linear_argmax, predict

needs_native = pytest.mark.skipif(backends.native() is None, reason="pydebias._C not built")


def _run_without_avx512(code: str) -> None:
    """Run ``code`` in a fresh process with the AVX-512 kernels off (the switch is read
    once per process); it must print ok."""
    env = dict(os.environ, PYDEBIAS_NO_AVX512="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@needs_native
@pytest.mark.parametrize("code", [_arrays.F16, _arrays.BF16])
def test_every_bit_pattern_widens_exactly(code):
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = np.empty(65536, np.float32)
    backends.native().widen(bits, code, out)
    if code == _arrays.F16:
        ref = bits.view(np.float16).astype(np.float32)
    else:
        ref = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(out.view(np.uint32), ref.view(np.uint32))  # NaN payloads too


@needs_native
def test_float16_avx2_path_widens_every_pattern_exactly():
    """The AVX2/F16C kernel (taken where AVX-512 is absent; forced here in a fresh process)
    gives numpy's bits for every pattern, NaN payloads included, and rows of odd length."""
    code = (
        "import numpy as np\n"
        "from pydebias import _arrays, backends\n"
        "bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)\n"
        "ref = bits.view(np.float16).astype(np.float32).view(np.uint32)\n"
        "for n in (65536, 65533, 7):\n"
        "    out = np.empty(n, np.float32)\n"
        "    backends.native().widen(bits[-n:], _arrays.F16, out)\n"
        "    assert (out.view(np.uint32) == ref[-n:]).all(), n\n"
        "print('ok')\n")
    _run_without_avx512(code)


@needs_native
def test_widen_rejects_wide_input():
    with pytest.raises(ValueError, match="x: expected"):
        backends.native().widen(np.zeros(4, np.float32), _arrays.F16, np.empty(4, np.float32))


@pytest.mark.parametrize("dtype", [np.float16, "bf16"])
def test_predict_on_half_precision_equals_float32_predict(dtype):
    d = planted(n_train=2000, n_val=10, n_test=3000, seed=2)
    erm = ERM().fit(d["train"])
    x32 = d["test"].features
    x = torch.from_numpy(x32).to(torch.bfloat16) if dtype == "bf16" else x32.astype(np.float16)
    widened = torch.from_numpy(x.astype(np.float32)) if dtype != "bf16" else x.float()
    ref = erm(widened).argmax(1).numpy()
    np.testing.assert_array_equal(predict(erm, x, batch_size=700), ref)


@needs_native
@pytest.mark.parametrize("dtype", [np.float16, "bf16"])
@pytest.mark.parametrize("C,m", [(1, 37), (2, 37), (7, 37), (2, 48), (4, 200), (3, 5)])
def test_native_predict_equals_torch_argmax(dtype, C, m):
    """predict's native path for 16-bit rows (one pass, logits in SIMD order) against
    torch on the widened rows: random rows of odd width, a duplicated class (ties go to
    the lowest), +-inf and NaN rows (a NaN logit wins, as torch.argmax), one row. Up to
    four classes run the AVX-512 kernel where the CPU has it (32-column steps, a full
    16-column step, a masked last step); seven the generic one."""
    rng = np.random.default_rng(C)
    head = torch.nn.Linear(m, C)
    if C > 2:
        with torch.no_grad():
            head.weight[2] = head.weight[1]
            head.bias[2] = head.bias[1]
    x32 = rng.standard_normal((3001, m)).astype(np.float32)
    x32[5, 3] = np.inf
    x32[6, 4] = -np.inf
    x32[7, 0] = np.nan
    x = torch.from_numpy(x32).to(torch.bfloat16) if dtype == "bf16" else x32.astype(np.float16)
    widened = x.float() if dtype == "bf16" else torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        ref = head(widened).argmax(1).numpy()
    out = np.empty(len(ref), dtype=np.int64)
    assert _native_linear_argmax(head, x, out, None)  # the native path takes it
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(predict(head, x), ref)
    np.testing.assert_array_equal(predict(head, x[:1]), ref[:1])
    assert not _native_linear_argmax(head, x32, out, None)  # float32 rows: torch's GEMM


@needs_native
def test_native_predict_without_avx512_equals_torch_argmax():
    """Without AVX-512 (turned off in a fresh process): one to four classes take the AVX2 +
    F16C kernel where the CPU has it (32-column steps, then 8-column steps, the last one
    partial), seven classes the generic one; float16 and bfloat16 rows with +-inf and NaN."""
    code = (
        "import numpy as np, torch\n"
        "from pydebias.metrics import _native_linear_argmax\n"
        "rng = np.random.default_rng(5)\n"
        "for C in (1, 2, 3, 4, 7):\n"
        "    for m in (200, 37, 1024):\n"
        "        for dtype in ('f16', 'bf16'):\n"
        "            head = torch.nn.Linear(m, C)\n"
        "            x32 = rng.standard_normal((1001, m)).astype(np.float32)\n"
        "            x32[5, 3], x32[6, 4], x32[7, 0] = np.inf, -np.inf, np.nan\n"
        "            x = torch.from_numpy(x32).to(torch.bfloat16) if dtype == 'bf16' else x32.astype(np.float16)\n"
        "            wide = x.float() if dtype == 'bf16' else torch.from_numpy(x.astype(np.float32))\n"
        "            with torch.no_grad():\n"
        "                ref = head(wide).argmax(1).numpy()\n"
        "            out = np.empty(len(ref), dtype=np.int64)\n"
        "            assert _native_linear_argmax(head, x, out, None)\n"
        "            assert (out == ref).all(), (C, m, dtype, np.flatnonzero(out != ref)[:5])\n"
        "print('ok')\n")
    _run_without_avx512(code)
