"""A throwaway MKL vector-math call per thread, so training is reproducible from its seed.

torch's x86 builds send some float unary ops to MKL's vector math library (VML); ``sqrt``
is one, and every Adam step calls it. VML keeps lazily initialised per-thread state, and
on an AVX-512 machine a thread's *first* call could return results about 1e-4 off
(instead of within 1 ulp), depending on what the process had done before. Once a thread
has made one call, later calls are right. The same seed fine-tuned twice could so give
two different networks. :func:`warm_vml` makes that first call on purpose, on the calling
thread and on every intra-op thread, before any real one; :func:`install` runs it at
``import pydebias`` and before every optimizer step of any optimizer (so a thread, or a
thread count, that appears later is warmed before its first Adam step). The measurements
are in ``docs/results/README.md`` ("A first-call defect in MKL's vector math").
"""
import threading

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

_warmed: set = set()
_lock = threading.Lock()

# ATen splits an element-wise op into chunks of at least 32,768 elements (its grain
# size), so 2 x 32,768 per thread reaches every thread of the intra-op pool.
_PER_THREAD = 2 * 32768


def warm_vml() -> None:
    """Make one VML call (``torch.sqrt``) on the calling thread alone, then one split over
    all ``torch.get_num_threads()`` intra-op threads: about 2 ms, once per (calling thread,
    thread count); later calls only look the pair up."""
    key = (threading.get_ident(), torch.get_num_threads())
    if key in _warmed:  # the common case, before every optimizer step: no lock
        return
    with _lock:
        if key in _warmed:
            return
        # on the CPU in float32 whatever the user's default device and dtype
        torch.sqrt(torch.ones(16, device="cpu", dtype=torch.float32))  # below the grain size: this thread
        torch.sqrt(torch.ones(key[1] * _PER_THREAD, device="cpu", dtype=torch.float32))
        _warmed.add(key)


def _before_step(optimizer, args, kwargs) -> None:
    warm_vml()


def install() -> None:
    """Warm now, and before every optimizer step from here on (torch's global step
    pre-hook: a set lookup once the thread is warm). Called once, by ``import pydebias``."""
    warm_vml()
    register_optimizer_step_pre_hook(_before_step)
