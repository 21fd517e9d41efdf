"""Embeddings extracted by several processes: one ``.npy`` shard per rank and a JSON
manifest that reads them back as one set.

``extract_embeddings(model, data, layer, out="feats.npy", process_group=g)`` has rank r
of w extract rows ``shard_rows(n, r, w)`` (contiguous, in rank order) into
``feats.rank{r}-of-{w}.npy`` (resumable, like a single-process ``out``), then rank 0
writes ``feats.manifest.json`` (temporary file + rename) once every rank has finished.
:func:`open_shards` gives one rank's rows (what a ``process_group`` fit reads) or the
whole set in row order, in memory or written to one ``.npy`` memmap.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

__all__ = ["shard_rows", "shard_path", "manifest_path", "open_shards", "read_manifest"]

_FORMAT = "pydebias.shards/1"


def shard_rows(n: int, rank: int, world: int) -> slice:
    """The rows of rank ``rank`` of ``world``: a contiguous block, blocks in rank order,
    sizes differing by at most one. Use it to give each rank its labels."""
    if not 0 <= rank < world:
        raise ValueError(f"rank: expected 0 <= rank < world ({world}), got {rank}")
    return slice(rank * n // world, (rank + 1) * n // world)


def _stem(out: str) -> str:
    out = os.fspath(out)
    if not out.endswith(".npy"):
        raise ValueError(f"out: expected a path ending in '.npy', got {out!r}")
    return out[:-4]


def shard_path(out: str, rank: int, world: int) -> str:
    """Where rank ``rank`` of ``world`` writes its rows for ``out``."""
    return f"{_stem(out)}.rank{rank}-of-{world}.npy"


def manifest_path(out: str) -> str:
    """The manifest of the shards of ``out``."""
    return f"{_stem(out)}.manifest.json"


def local_part(data, rows: slice):
    """``data`` restricted to ``rows``, keeping its kind (a DataLoader keeps its batch size)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    if isinstance(data, DataLoader):
        return DataLoader(Subset(data.dataset, range(rows.start, rows.stop)), batch_size=data.batch_size,
                          shuffle=False, num_workers=data.num_workers, collate_fn=data.collate_fn,
                          pin_memory=data.pin_memory, worker_init_fn=data.worker_init_fn)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return data[rows]
    return Subset(data, range(rows.start, rows.stop))


def write_manifest(out, shapes: np.ndarray, dtype: str) -> None:
    """Rank 0's manifest for ``out``: ``shapes`` (ranks, 2) rows and columns per shard."""
    world = shapes.shape[0]
    if len(set(shapes[:, 1].tolist())) != 1:
        raise ValueError(f"layer: the ranks' rows have different widths {shapes[:, 1].tolist()}")
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0])])
    meta = {"format": _FORMAT, "shape": [int(starts[-1]), int(shapes[0, 1])], "dtype": dtype,
            "shards": [{"path": os.path.basename(shard_path(out, r, world)), "start": int(starts[r]),
                        "stop": int(starts[r + 1])} for r in range(world)]}
    from ..results import write_atomic

    write_atomic(manifest_path(out), json.dumps(meta, indent=1).encode())


def read_manifest(path) -> Dict:
    """The checked manifest at ``path``: shard files (absolute paths), row ranges, shape."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"path: cannot read a shard manifest at {path!r} ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"path: {path!r} is not a pydebias shard manifest (format {_FORMAT})")
    base = os.path.dirname(os.path.abspath(path))
    at = 0
    for s in meta["shards"]:
        s["path"] = os.path.join(base, s["path"])
        if s["start"] != at or s["stop"] < s["start"]:
            raise ValueError(f"path: {path!r} lists shards that do not tile the rows in order")
        at = s["stop"]
        if not os.path.exists(s["path"]):
            raise ValueError(f"path: the shard {s['path']!r} listed in {path!r} is missing; copy it beside "
                             "the manifest or extract again")
    if at != meta["shape"][0]:
        raise ValueError(f"path: {path!r} lists {at} rows in its shards, {meta['shape'][0]} in its shape")
    return meta


def open_shards(path, rank: Optional[int] = None, out=None):
    """Rows of the set a manifest describes.

    ``rank``: that rank's shard as a read-only memmap (rows ``shards[rank]["start"]`` to
    ``"stop"`` of the set). Otherwise the whole set in row order: in memory, or with
    ``out`` (a ``.npy`` path) copied shard by shard into one file (temporary file +
    rename) and returned as a read-only memmap, for sets larger than memory.
    """
    meta = read_manifest(path)
    shards = meta["shards"]

    def load(s):
        arr = np.load(s["path"], mmap_mode="r")
        if arr.shape != (s["stop"] - s["start"], meta["shape"][1]) or str(arr.dtype) != meta["dtype"]:
            raise ValueError(f"path: the shard {s['path']!r} holds {arr.shape} {arr.dtype}, the manifest says "
                             f"{s['stop'] - s['start']} rows of {meta['shape'][1]} {meta['dtype']}; extract again")
        return arr

    if rank is not None:
        if not 0 <= rank < len(shards):
            raise ValueError(f"rank: expected 0 <= rank < {len(shards)} (the manifest's shards), got {rank}")
        return load(shards[rank])
    if out is None:
        return np.concatenate([np.asarray(load(s)) for s in shards])
    out = os.fspath(out)
    _stem(out)
    tmp = out[:-4] + ".partial.npy"
    mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.dtype(meta["dtype"]), shape=tuple(meta["shape"]))
    try:
        for s in shards:
            src = load(s)
            step = max(1, (64 << 20) // max(1, src.shape[1] * src.dtype.itemsize))
            for i in range(0, src.shape[0], step):
                mm[s["start"] + i:s["start"] + min(src.shape[0], i + step)] = src[i:i + step]
        mm.flush()
        del mm
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return np.load(out, mmap_mode="r")
