"""The native float16/bfloat16 -> float32 widening and the predict path that uses it."""
import numpy as np
import pytest
import torch

from pydebias import _arrays, backends
from pydebias.data import planted
from pydebias.methods import ERM
from pydebias.metrics import predict

needs_native = pytest.mark.skipif(backends.native() is None, reason="pydebias._C not built")


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
