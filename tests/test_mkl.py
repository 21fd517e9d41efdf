"""pydebias._mkl: the throwaway MKL vector-math call per thread (why: pydebias/_mkl.py)."""
import subprocess
import sys
import threading

import torch

from pydebias import _mkl


def test_every_thread_and_thread_count_is_warmed_once(monkeypatch):
    calls = []
    real_sqrt = torch.sqrt
    monkeypatch.setattr(_mkl.torch, "sqrt", lambda t: calls.append(t.numel()) or real_sqrt(t))
    monkeypatch.setattr(_mkl, "_warmed", set())
    threads = torch.get_num_threads()
    _mkl.warm_vml()
    _mkl.warm_vml()  # the same thread and count: nothing more
    assert calls == [16, threads * _mkl._PER_THREAD]
    worker = threading.Thread(target=_mkl.warm_vml)
    worker.start()
    worker.join()
    assert len(calls) == 4 and len(_mkl._warmed) == 2  # another thread: warmed too
    torch.set_num_threads(1)
    try:
        _mkl.warm_vml()
    finally:
        torch.set_num_threads(threads)
    assert calls[-1] == _mkl._PER_THREAD and len(_mkl._warmed) == 3


def test_an_optimizer_step_warms_its_thread_first(monkeypatch):
    monkeypatch.setattr(_mkl, "_warmed", set())
    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.ones(3)
    opt = torch.optim.Adam([param], lr=0.1)
    seen = {}

    def train():
        key = (threading.get_ident(), torch.get_num_threads())
        seen["before"] = key in _mkl._warmed
        opt.step()  # torch's global step pre-hook, installed by `import pydebias`
        seen["after"] = key in _mkl._warmed

    worker = threading.Thread(target=train)
    worker.start()
    worker.join()
    assert seen == {"before": False, "after": True}
    assert torch.allclose(param.detach(), torch.full((3,), 0.9))  # the step itself unchanged


def test_pydebias_import_warms_the_importing_thread():
    code = ("import threading, torch, pydebias._mkl as m; "
            "print((threading.get_ident(), torch.get_num_threads()) in m._warmed)")
    out = subprocess.run([sys.executable, "-c", "import pydebias; " + code], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out[-1] == "True"
