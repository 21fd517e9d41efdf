"""Grouped statistics across processes (``torch.distributed``: gloo on the CPU).

Each rank reduces its own rows with the native kernels; nothing but per-(group, neuron)
tables crosses the network:

- counts, minima and maxima by ``all_reduce`` (SUM / MIN / MAX): bit for bit what one
  process computes on all the rows;
- means and variances from per-rank sums of ``x - shift`` and of their squares, with one
  shift per (group, neuron) shared by the ranks (a row of the group), summed by
  ``all_reduce``: the single-process formula, within float tolerance;
- exact quantiles by a distributed selection: brackets around each target from a global
  row sample (every rank's share, one stride), one pass per rank counting the values below
  each bracket and keeping the few inside it, and a radix select over the kept values (8
  key bits per round, the per-digit counts summed by ``all_reduce``, :func:`radix_select`).
  Where a bracket missed or a keep region overflowed, the same radix select runs over that
  column's rows instead. The values selected are order statistics of the union, so they
  equal the single-process ones.

Every rank must call with the same arguments except its rows; an error on one rank
(bad input, NaN) is raised on all of them, so none waits forever. This module holds the
reductions; ``pydebias.stats`` runs them (``neuron_stats(..., process_group=...)``).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["all_reduce", "all_reduce_many", "agree", "combine_sums", "radix_select", "radix_select_csr", "keys",
           "unkey", "run_local", "global_max", "global_sum", "sum_grads", "describe"]


def all_reduce(a: np.ndarray, op: str, group) -> np.ndarray:
    """``a`` reduced over the ranks of ``group`` ("sum", "min" or "max"); a new array."""
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    t = torch.from_numpy(np.ascontiguousarray(a).copy())
    dist.all_reduce(t, op=ops[op], group=group)
    return t.numpy()


def all_reduce_many(arrays, op: str, group) -> list:
    """Several arrays of one dtype reduced in one ``all_reduce`` (each round trip costs
    more than its bytes on loopback: ~14 ms for 4 ranks on 2 cores), in their shapes."""
    arrays = [np.asarray(a) for a in arrays]
    flat = all_reduce(np.concatenate([a.reshape(-1) for a in arrays]), op, group)
    out, at = [], 0
    for a in arrays:
        out.append(flat[at:at + a.size].reshape(a.shape))
        at += a.size
    return out


def agree(error: Optional[BaseException], group) -> None:
    """Raise on every rank if any rank hit an error (the highest such rank raises its own,
    the others a ``ValueError`` naming it): a rank that raised alone would leave the
    others waiting in their next reduction."""
    flag = all_reduce(np.array([0 if error is None else 1 + dist.get_rank(group)], np.int64), "max", group)
    if flag[0] == 0:
        return
    if error is not None and flag[0] == 1 + dist.get_rank(group):
        raise error
    raise ValueError(f"process_group: rank {int(flag[0]) - 1} of the group failed (see its error); "
                     "every rank stops")


def checked(group, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on every rank, a ``ValueError`` / ``TypeError`` it raises on
    any rank raised on every rank (:func:`agree`): for the checks of a rank's own rows at a
    boundary, before the first reduction."""
    try:
        out, error = fn(*args, **kwargs), None
    except (ValueError, TypeError) as e:
        out, error = None, e
    agree(error, group)
    return out


def combine_sums(count, s1, s2, lo, hi, group):
    """Per-rank moment accumulators (counts, sums of ``x - shift`` and of their squares
    with one shift shared by all ranks, minima, maxima; +-inf for a group the rank has no
    rows of) summed / reduced over ``group``: the global accumulators, on every rank."""
    # counts travel as float64 (exact below 2**53); maxima as minima of their negations
    c, s1, s2 = all_reduce_many([np.asarray(count, np.float64), s1, s2], "sum", group)
    lo, neg_hi = all_reduce_many([lo, -np.asarray(hi)], "min", group)
    return c.astype(np.int64), s1, s2, lo, -neg_hi


# -- exact quantiles ----------------------------------------------------------------

def keys(v: np.ndarray) -> Tuple[np.ndarray, int]:
    """Order-preserving unsigned keys of float32 / float64 values and their width in bits."""
    if v.dtype == np.float32:
        u = v.view(np.uint32)
        return np.where(u >> 31, ~u, u | np.uint32(1 << 31)), 32
    u = np.ascontiguousarray(v, dtype=np.float64).view(np.uint64)
    return np.where(u >> np.uint64(63), ~u, u | np.uint64(1 << 63)), 64


def unkey(k: np.ndarray, bits: int) -> np.ndarray:
    """The float64 values of keys made by :func:`keys`."""
    if bits == 32:
        k = k.astype(np.uint32)
        u = np.where(k >> 31, k & np.uint32(0x7FFFFFFF), ~k)
        return u.view(np.float32).astype(np.float64)
    k = k.astype(np.uint64)
    u = np.where(k >> np.uint64(63), k & np.uint64(0x7FFFFFFFFFFFFFFF), ~k)
    return u.view(np.float64)


def _next_digit(hist: np.ndarray, k: np.ndarray, prefix: np.ndarray, shift: int, dtype) -> None:
    """One round's choice from the summed (cells, bins) digit counts: each cell's digit
    holding its remaining rank ``k`` goes into ``prefix``; ``k`` becomes the rank within it."""
    n_cells = k.size
    cum = np.cumsum(hist.astype(np.int64).reshape(n_cells, -1), axis=1)
    d = np.argmax(cum > k[:, None], axis=1)
    k -= np.where(d > 0, cum[np.arange(n_cells), np.maximum(d - 1, 0)], 0)
    prefix |= d.astype(dtype) << dtype(shift)


def radix_select(keys: np.ndarray, cell: np.ndarray, target: np.ndarray, bits: int, group) -> np.ndarray:
    """For each cell ``c``, the key of rank ``target[c]`` (0-based) among the keys of all
    ranks with ``cell == c``: ``bits / 8`` rounds, each an ``all_reduce`` of per-cell
    256-bin counts of the next 8 key bits among the keys whose higher bits match so far.
    Every rank passes the same ``target`` and gets the same keys back. The numpy reference
    of :func:`radix_select_csr`'s native rounds."""
    n_cells = target.size
    k = target.astype(np.int64).copy()
    dtype = np.uint32 if bits == 32 else np.uint64
    prefix = np.zeros(n_cells, dtype=dtype)
    keys = keys.astype(dtype, copy=False)
    base = cell.astype(np.int64) * 256  # the cell's first bin
    for shift in range(bits - 8, -1, -8):
        s = dtype(shift)
        if shift < bits - 8:  # keep the keys that still match their cell's prefix
            hi = dtype(shift + 8)
            on = (keys >> hi) == (prefix[base >> 8] >> hi)
            keys, base = keys[on], base[on]
        bins = base + ((keys >> s) & dtype(255)).view(np.int64 if bits == 64 else np.int32)  # no uint64 + int64
        # int32 counts: half the bytes on the wire (a cell holds fewer than 2^31 values)
        hist = np.bincount(bins, minlength=n_cells * 256).astype(np.int32)
        _next_digit(all_reduce(hist, "sum", group), k, prefix, shift, dtype)
    return prefix


#: key bits per round of the native radix select. Latency, not bytes, bounds a round on
#: loopback (4 ranks on 2 cores: ~13 ms an all_reduce of 0.6 or 10 MB alike), so wide digits
#: over keys relative to each cell's smallest, which span only the bits they need
RADIX_DIGIT_BITS = 8


def _signed(k: np.ndarray) -> np.ndarray:
    """uint32 / uint64 keys as int64 of the same order (what ``all_reduce`` MIN / MAX take)."""
    return k.astype(np.int64) if k.dtype == np.uint32 else (k ^ np.uint64(1 << 63)).view(np.int64)


def _unsigned(s: np.ndarray, dtype) -> np.ndarray:
    return s.astype(dtype) if dtype == np.uint32 else s.view(np.uint64) ^ np.uint64(1 << 63)


def radix_select_csr(values: np.ndarray, off: np.ndarray, live: np.ndarray, target: np.ndarray, group,
                     native: bool = True, bounds: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
    """For each cell ``c`` with ``target[c] >= 0``, the value (float64) of rank
    ``target[c]`` among all ranks' values of the cell; NaN where ``target[c] < 0``. This
    rank's values of cell c are ``values[off[c]:off[c] + live[c]]`` (float32 or float64,
    regions anywhere in the array). ``target`` may be (J, cells): J selections over the
    same values in the same rounds (one ``all_reduce`` a round for all). Every rank passes
    the same ``target``. ``bounds``: (lo, hi) per cell that hold every value of the cell on
    every rank (a bracket), else the key range is reduced over the ranks.

    Natively: keys relative to the cell's smallest possible key, so only the bits the
    cell spans are selected, in rounds of ``RADIX_DIGIT_BITS``, each one pass over each
    cell's remaining keys that compacts them in place (``_C.radix_round``; a selection
    compacts its own copy). ``native=False`` (or no extension) runs :func:`radix_select`."""
    from .backends import native as native_lib

    bits = 64 if values.dtype == np.float64 else 32
    dtype = np.uint32 if bits == 32 else np.uint64
    tgt = np.atleast_2d(np.asarray(target, dtype=np.int64))
    J, n_cells = tgt.shape
    want = tgt >= 0
    live = np.ascontiguousarray(live[:n_cells], dtype=np.int64)
    off = np.ascontiguousarray(off[:n_cells], dtype=np.int64)
    lib = native_lib() if native else None
    if lib is None:
        got = np.zeros((J, n_cells), dtype=dtype)
        for j in range(J):
            lv = np.where(want[j], live, 0)
            cells = np.repeat(np.arange(n_cells), lv)
            ends = np.cumsum(lv)
            at = np.arange(int(ends[-1]) if n_cells else 0) - np.repeat(ends - lv - off, lv)
            got[j] = radix_select(keys(values[at])[0], cells, np.maximum(tgt[j], 0), bits, group)
    else:
        values = np.ascontiguousarray(values)
        copies = [np.empty(values.size, dtype=dtype) for _ in range(J)]
        for c in copies:  # keyed again rather than copied: one pass either way
            lib.radix_keys(values, c)
        if bounds is not None:
            lo_k = keys(np.asarray(bounds[0], np.float64).astype(values.dtype))[0]
            hi_k = keys(np.asarray(bounds[1], np.float64).astype(values.dtype))[0]
            base, span = lo_k.astype(dtype), np.where(lo_k <= hi_k, hi_k - lo_k, 0).astype(dtype)
        else:
            kmin, kmax = np.empty(n_cells, dtype), np.empty(n_cells, dtype)
            lib.key_range(copies[0], off, np.where(want.any(0), live, 0), kmin, kmax)
            lo, not_hi = all_reduce_many([_signed(kmin), ~_signed(kmax)], "min", group)  # max x = ~min ~x
            hi = ~not_hi
            base = _unsigned(lo, dtype)
            span = np.where(lo <= hi, _unsigned(hi, dtype) - base, 0).astype(dtype)
        width = int(span[want.any(0)].max()).bit_length() if want.any() else 0
        digit = RADIX_DIGIT_BITS
        top = min(bits, -(-max(1, width) // digit) * digit)
        lives = [np.where(want[j], live, 0) for j in range(J)]
        k = np.ascontiguousarray(np.maximum(tgt, 0).reshape(-1))
        got = np.zeros((J, n_cells), dtype=dtype)
        for shift in range(top - digit, -1, -digit):
            hist = np.zeros((J, n_cells << digit), np.int32)  # int32: half the bytes on the wire
            for j in range(J):
                lib.radix_round(copies[j], off, lives[j], base, span, got[j], shift, digit, hist[j])
            lib.radix_choose(all_reduce(hist, "sum", group), digit, shift, k, got.reshape(-1))
        got = base[None, :] + got
    out = unkey(got.reshape(-1), bits).reshape(J, n_cells)
    out[~want] = np.nan
    return out if np.ndim(target) == 2 else out[0]


def check_group(process_group) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (torchrun does it for you)")


def global_ids(local_max: int, given: Optional[int], group) -> Optional[int]:
    """The id count every rank uses: ``given``, else one more than the largest id of any rank."""
    if given is not None:
        return given
    return int(all_reduce(np.array([local_max], np.int64), "max", group)[0]) + 1


def global_max(value: int, group) -> int:
    """The largest ``value`` of any rank (class and group counts a shard may lack)."""
    return int(all_reduce(np.array([value], np.int64), "max", group)[0])


def global_sum(values, group) -> np.ndarray:
    """``values`` (a number or array; float64) summed over the ranks, in their shape."""
    a = np.asarray(values, dtype=np.float64)
    return all_reduce(a, "sum", group).reshape(a.shape)


def sum_grads(params, loss: float, group) -> float:
    """Sum each parameter's ``.grad`` (a missing one counts as zeros) and ``loss`` over the
    ranks, in one ``all_reduce`` of float64; returns the summed loss. After it every rank
    holds the gradient of the union's loss, so the same optimiser step on every rank."""
    params = list(params)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    parts = [p.grad.detach().reshape(-1).double() for p in params]
    flat = torch.cat(parts + [torch.tensor([float(loss)], dtype=torch.float64)])
    flat = torch.from_numpy(all_reduce(flat.numpy(), "sum", group))
    at = 0
    for p in params:
        p.grad.copy_(flat[at:at + p.numel()].view_as(p.grad))
        at += p.numel()
    return float(flat[-1])


def describe(group) -> Optional[str]:
    """How a report records a process group: ``"N ranks"`` (None for no group)."""
    return None if group is None else f"{dist.get_world_size(group)} ranks"


def _worker(rank, world_size, init, backend, fn, args, queue):
    try:
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world_size)
        try:
            queue.put((rank, True, fn(rank, world_size, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put((rank, False, f"{type(e).__name__}: {e}"))


def run_local(fn, world_size: int, *args, backend: str = "gloo", timeout: float = 300.0,
              threads: Optional[int] = None) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined in a
    process group on this machine (for tests and benchmarks; in production, ``torchrun``
    starts the ranks). ``fn`` must be importable (a module-level function). Returns the
    ranks' results in rank order; raises ``RuntimeError`` with a rank's error if one failed.
    ``threads``: OpenMP threads per rank (``OMP_NUM_THREADS`` of the children; default the
    cores shared out, at least 1, where ``torchrun`` sets 1): more threads than cores spin
    in each other's way."""
    import multiprocessing as mp
    import os
    import queue as queue_mod
    import tempfile
    import time

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    per_rank = threads if threads is not None else max(1, (os.cpu_count() or 1) // world_size)
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "store")
        procs = [ctx.Process(target=_worker, args=(r, world_size, init, backend, fn, args, queue))
                 for r in range(world_size)]
        old = os.environ.get("OMP_NUM_THREADS")
        os.environ["OMP_NUM_THREADS"] = str(per_rank)  # read by each child's OpenMP runtime as it loads
        try:
            for p in procs:
                p.start()
        finally:
            if old is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = old
        results, errors = {}, []
        deadline = time.monotonic() + timeout
        try:
            while len(results) + len(errors) < world_size:
                try:
                    rank, ok, value = queue.get(timeout=1.0)
                except queue_mod.Empty:
                    dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                    if dead:  # killed, or failed before it could report (e.g. a script without a main guard)
                        raise RuntimeError(f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} without a "
                                           "result; a script that calls run_local needs `if __name__ == "
                                           "'__main__':`") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"run_local: no result from every rank within {timeout:.0f} s") from None
                    continue
                if ok:
                    results[rank] = value
                else:
                    errors.append(f"rank {rank}: {value}")
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
    if errors:
        raise RuntimeError("; ".join(sorted(errors)))
    return [results[r] for r in range(world_size)]
