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

__all__ = ["all_reduce", "agree", "combine_sums", "radix_select", "keys", "unkey", "run_local"]


def all_reduce(a: np.ndarray, op: str, group) -> np.ndarray:
    """``a`` reduced over the ranks of ``group`` ("sum", "min" or "max"); a new array."""
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    t = torch.from_numpy(np.ascontiguousarray(a).copy())
    dist.all_reduce(t, op=ops[op], group=group)
    return t.numpy()


def agree(error: Optional[BaseException], group) -> None:
    """Raise on every rank if any rank hit an error (the highest such rank raises its own,
    the others a ``ValueError`` naming it): a rank that raised alone would leave the
    others waiting in their next reduction."""
    flag = all_reduce(np.array([0 if error is None else 1 + dist.get_rank(group)], np.int64), "max", group)
    if flag[0] == 0:
        return
    if error is not None and flag[0] == 1 + dist.get_rank(group):
        raise error
    raise ValueError(f"features: rank {int(flag[0]) - 1} of the process group failed (see its error); "
                     "every rank stops")


def combine_sums(count, s1, s2, lo, hi, group):
    """Per-rank moment accumulators (counts, sums of ``x - shift`` and of their squares
    with one shift shared by all ranks, minima, maxima; +-inf for a group the rank has no
    rows of) summed / reduced over ``group``: the global accumulators, on every rank."""
    return (all_reduce(np.asarray(count, np.int64), "sum", group), all_reduce(s1, "sum", group),
            all_reduce(s2, "sum", group), all_reduce(lo, "min", group), all_reduce(hi, "max", group))


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


def radix_select(keys: np.ndarray, cell: np.ndarray, target: np.ndarray, bits: int, group) -> np.ndarray:
    """For each cell ``c``, the key of rank ``target[c]`` (0-based) among the keys of all
    ranks with ``cell == c``: ``bits / 8`` rounds, each an ``all_reduce`` of per-cell
    256-bin counts of the next 8 key bits among the keys whose higher bits match so far.
    Every rank passes the same ``target`` and gets the same keys back."""
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
        hist = all_reduce(hist, "sum", group).astype(np.int64).reshape(n_cells, 256)
        cum = np.cumsum(hist, axis=1)
        d = np.argmax(cum > k[:, None], axis=1)
        k -= np.where(d > 0, cum[np.arange(n_cells), np.maximum(d - 1, 0)], 0)
        prefix |= d.astype(dtype) << s
    return prefix


def check_group(process_group) -> None:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group first (torchrun does it for you)")


def global_ids(local_max: int, given: Optional[int], group) -> Optional[int]:
    """The id count every rank uses: ``given``, else one more than the largest id of any rank."""
    if given is not None:
        return given
    return int(all_reduce(np.array([local_max], np.int64), "max", group)[0]) + 1


def _worker(rank, world_size, init, backend, fn, args, queue):
    try:
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world_size)
        try:
            queue.put((rank, True, fn(rank, world_size, *args)))
        finally:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put((rank, False, f"{type(e).__name__}: {e}"))


def run_local(fn, world_size: int, *args, backend: str = "gloo", timeout: float = 300.0) -> list:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` fresh processes joined in a
    process group on this machine (for tests and benchmarks; in production, ``torchrun``
    starts the ranks). ``fn`` must be importable (a module-level function). Returns the
    ranks' results in rank order; raises ``RuntimeError`` with a rank's error if one failed."""
    import multiprocessing as mp
    import os
    import queue as queue_mod
    import tempfile
    import time

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as d:
        init = "file://" + os.path.join(d, "store")
        procs = [ctx.Process(target=_worker, args=(r, world_size, init, backend, fn, args, queue))
                 for r in range(world_size)]
        for p in procs:
            p.start()
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
