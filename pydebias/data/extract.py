"""extract_embeddings: a layer's outputs for a whole data set, with resumable memmap writes.

The output of one layer is captured with a forward hook; the forward pass stops right
after that layer (the rest of the network is not run). Rows are written batch by batch.
With ``out="feats.npy"`` the rows go to ``feats.npy.partial`` and a JSON sidecar
``feats.npy.partial.json`` records how many rows are done; an interrupted run resumes
from the last complete batch, and only a complete file is renamed to ``feats.npy``
(sidecar ``feats.npy.json``).
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
from typing import Iterator, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler, Subset

from .. import _arrays

__all__ = ["extract_embeddings"]

POOLS = ("avg", "max", "flatten")
_FORMAT = "pydebias.extract/1"
# Sidecar keys that must agree before a partial run is resumed or a final file reused:
# the settings, and fingerprints of the inputs and of the model's weights (other inputs
# of the same shape, or another model with the same layer name, must not reuse a file).
_MATCH_KEYS = ("n", "dtype", "layer", "pool", "batch_size", "inputs", "model")
_SAMPLED_ITEMS = 17  # inputs of the first batch hashed for the fingerprint


class _StopForward(Exception):
    """Raised by the hook once the layer's output is captured: the rest is not needed."""


# --------------------------------------------------------------------------- helpers
def _resolve_layer(model: torch.nn.Module, layer) -> Tuple[str, torch.nn.Module]:
    named = dict(model.named_modules())
    if isinstance(layer, str):
        if layer in named:
            return layer, named[layer]
        names = [n for n in named if n]
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        few = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(f"layer: the model has no module named {layer!r}.{hint} "
                         f"Valid names (from model.named_modules()) include: {few or '(none)'}")
    if isinstance(layer, torch.nn.Module):
        for name, mod in named.items():
            if mod is layer:
                return name, mod
        raise ValueError("layer: the module passed is not a submodule of model; pass one of "
                         "model.named_modules() (or its name)")
    raise TypeError(f"layer: expected a module name (str) or a torch.nn.Module, "
                    f"got {type(layer).__name__}")


def _pool(feats: torch.Tensor, pool: str, layer_name: str) -> torch.Tensor:
    if feats.ndim == 2:
        return feats
    if feats.ndim == 4 and pool == "avg":
        return feats.mean(dim=(2, 3))
    if feats.ndim == 4 and pool == "max":
        return feats.amax(dim=(2, 3))
    if feats.ndim >= 3 and pool == "flatten":
        return feats.reshape(feats.shape[0], -1)
    raise ValueError(f"pool: layer {layer_name!r} outputs shape {tuple(feats.shape)}; "
                     f"pool={pool!r} needs a conv map (N, C, H, W) or a 2-D (N, D) output "
                     f"(pool='flatten' takes any (N, ...) output), or pick another layer")


def _first(item, what: str):
    """x from an item/batch that is x or (x, ...)."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError(f"data: got an empty {what}; expected x or (x, ...)")
        item = item[0]
    if isinstance(item, dict):
        raise TypeError(f"data: {what}s are dicts; give a dataset/loader whose {what}s are x "
                        f"or (x, ...) tuples, or the input tensor itself")
    return item


def _plan(data, batch_size: int):
    """(n rows, batch size, batches(start) -> iterator of input batches) for any data kind."""
    if isinstance(data, DataLoader):
        ds = data.dataset
        if isinstance(ds, IterableDataset):
            raise TypeError("data: a DataLoader over an IterableDataset has no known length; "
                            "use a map-style Dataset")
        bs = data.batch_size
        if bs is None or not isinstance(data.sampler, SequentialSampler):
            raise ValueError("data: the DataLoader must yield samples in order; build it with "
                             "shuffle=False, batch_size=... and no custom sampler, or pass its "
                             "dataset instead")
        n = len(ds) if not data.drop_last else (len(ds) // bs) * bs

        def loader_batches(start: int) -> Iterator:
            loader = data
            if start:  # same batch boundaries: start is a multiple of bs
                loader = DataLoader(Subset(ds, range(start, n)), batch_size=bs, shuffle=False,
                                    num_workers=data.num_workers, collate_fn=data.collate_fn,
                                    pin_memory=data.pin_memory,
                                    worker_init_fn=data.worker_init_fn)
            for batch in loader:
                yield _first(batch, "batch")
        return n, bs, loader_batches

    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)

    if isinstance(data, (torch.Tensor, np.ndarray)):
        if data.ndim < 1:
            raise ValueError("data: expected inputs with a leading sample axis, got a scalar")
        n = int(data.shape[0])

        def array_batches(start: int) -> Iterator:
            for s in range(start, n, batch_size):
                yield _arrays.as_tensor(data[s:s + batch_size])
        return n, batch_size, array_batches

    if isinstance(data, IterableDataset):
        raise TypeError("data: an IterableDataset has no known length; use a map-style Dataset")
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        n = len(data)

        def dataset_batches(start: int) -> Iterator:
            for s in range(start, n, batch_size):
                xs = [_first(data[i], "item") for i in range(s, min(n, s + batch_size))]
                yield torch.stack([torch.as_tensor(x) for x in xs])
        return n, batch_size, dataset_batches

    raise TypeError(f"data: expected a torch Dataset, DataLoader, tensor or ndarray, "
                    f"got {type(data).__name__}")


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _input_fingerprint(data, n: int, batch_size: int) -> str:
    """sha256 of up to ``_SAMPLED_ITEMS`` inputs spread over the first batch (index, dtype,
    shape, bytes), with ``n`` in the sidecar beside it: cheap next to a forward pass, and
    it tells other inputs apart. The first batch only: a resumed run must not read the
    items its interrupted run never reached."""
    source = data.dataset if isinstance(data, DataLoader) else data
    first = min(n, batch_size)
    h = hashlib.sha256()
    for i in sorted(set(np.linspace(0, first - 1, num=min(first, _SAMPLED_ITEMS)).round().astype(int).tolist())):
        t = torch.as_tensor(_first(source[i], "item"))
        h.update(f"{i}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()[:32]


def _model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()[:32]


def _model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == _FORMAT else None


def _write_json(path: str, meta: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _matches(meta: Optional[dict], want: dict) -> bool:
    return meta is not None and all(meta.get(k) == want[k] for k in _MATCH_KEYS)


def _diff(meta: dict, want: dict) -> str:
    return ", ".join(f"{k}: file {meta.get(k)!r} vs now {want[k]!r}"
                     for k in _MATCH_KEYS if meta.get(k) != want[k])


# --------------------------------------------------------------------------- public
def extract_embeddings(model: torch.nn.Module, data, layer: Union[str, torch.nn.Module],
                       out: Optional[Union[str, os.PathLike]] = None, batch_size: int = 256,
                       pool: str = "avg", device=None, progress: bool = True,
                       dtype=np.float32, process_group=None) -> Union[np.ndarray, np.memmap]:
    """Outputs of ``layer`` for every sample of ``data``, one row per sample, in order.

    Parameters
    ----------
    model : torch.nn.Module, run in eval mode under ``torch.no_grad`` (its training flag
        is restored afterwards). The forward pass stops after ``layer``.
    data : a map-style Dataset (items ``x`` or ``(x, ...)``), a DataLoader that yields
        ``x`` or ``(x, ...)`` in order (its own batch size is used), or a tensor/ndarray of
        inputs. Batches are taken in order, never shuffled.
    layer : a name from ``model.named_modules()`` or the submodule itself.
    out : None for an in-memory ndarray, or a path ending in ``.npy``: the rows are written
        to ``out + ".partial"`` (a ``.npy`` memmap) and renamed to ``out`` when complete,
        with a JSON sidecar ``out + ".json"``. An interrupted run resumes from its last
        complete batch; a complete file of the same settings, inputs and model weights
        (fingerprints of the first batch's inputs and of the state dict) is returned without
        recomputing, and any other file at ``out`` is an error, never silently reused.
    batch_size : samples per forward pass (ignored for a DataLoader).
    pool : how (N, C, H, W) conv maps become rows: "avg", "max" (over H, W) or "flatten".
        2-D (N, D) outputs are taken as they are.
    device : where inputs go; None uses the device of the model's parameters. A device
        given here moves the model too (``model.to(device)``).
    progress : show a tqdm progress bar.
    dtype : numpy dtype of the result (float32 by default).
    process_group : a ``torch.distributed`` group (data-parallel extraction; ``out``
        required): rank r of w extracts its contiguous block of rows into its own
        ``.npy`` shard beside ``out``, rank 0 writes a manifest
        (:mod:`pydebias.data.shards`), and each rank gets its own rows back;
        :func:`pydebias.data.open_shards` reads them as one set.

    Returns
    -------
    (N, D) numpy array, or a read-only ``np.memmap`` of ``out`` when ``out`` is given.
    """
    if process_group is not None:
        return _extract_sharded(model, data, layer, out, process_group, batch_size=batch_size, pool=pool,
                                device=device, progress=progress, dtype=dtype)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if pool not in POOLS:
        raise ValueError(f"pool: expected one of {POOLS}, got {pool!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"dtype: not a numpy dtype: {dtype!r}") from e
    if dtype.kind != "f":
        raise TypeError(f"dtype: expected a float dtype such as np.float32, got {dtype}")
    layer_name, module = _resolve_layer(model, layer)
    n, bs, batches = _plan(data, batch_size)
    if n == 0:
        raise ValueError("data: no samples to extract (the data set is empty)")

    want = {"format": _FORMAT, "n": n, "dtype": dtype.name, "layer": layer_name,
            "pool": pool, "batch_size": bs}
    if out is not None:  # fingerprints only matter for a file that may be reused
        want.update(inputs=_input_fingerprint(data, n, bs), model=_model_fingerprint(model))

    # ---- where the rows go, and where to start
    final = part = final_meta_path = part_meta_path = None
    start, n_cols, mm = 0, None, None
    if out is not None:
        final = os.fspath(out)
        if not final.endswith(".npy"):
            raise ValueError(f"out: expected a path ending in '.npy', got {final!r}")
        part, final_meta_path = final + ".partial", final + ".json"
        part_meta_path = part + ".json"
        if os.path.exists(final):
            meta = _read_json(final_meta_path)
            if meta is None:  # crash between the two renames that finish a run
                pmeta = _read_json(part_meta_path)
                if pmeta is not None and pmeta.get("complete") and _matches(pmeta, want):
                    os.replace(part_meta_path, final_meta_path)
                    meta = pmeta
            if meta is None:
                raise ValueError(f"out: {final!r} exists but has no valid sidecar "
                                 f"{final_meta_path!r}; delete it or choose another path")
            if not _matches(meta, want):
                raise ValueError(f"out: {final!r} exists with other settings ({_diff(meta, want)}); "
                                 f"delete it (and {final_meta_path!r}) or choose another path")
            try:
                arr = np.load(final, mmap_mode="r")
            except (OSError, ValueError, EOFError) as e:
                raise ValueError(f"out: {final!r} is damaged ({e}); delete it and {final_meta_path!r} "
                                 "to extract again") from None
            if arr.shape != tuple(meta.get("shape", ())) or arr.dtype != dtype:
                raise ValueError(f"out: {final!r} does not match its sidecar "
                                 f"(shape {arr.shape}, dtype {arr.dtype}); delete both files")
            return arr
        if os.path.exists(part):
            meta = _read_json(part_meta_path)
            if meta is not None:  # no sidecar: nothing recorded, start over
                if not _matches(meta, want):
                    raise ValueError(f"out: the partial file {part!r} was written with other "
                                     f"settings ({_diff(meta, want)}); delete {part!r} and "
                                     f"{part_meta_path!r} to start over, or use the same settings")
                done = meta.get("rows_done")
                shape = meta.get("shape")
                ok = (isinstance(done, int) and 0 <= done <= n and (done % bs == 0 or done == n)
                      and isinstance(shape, list) and len(shape) == 2 and shape[0] == n)
                if ok:
                    try:
                        mm = np.lib.format.open_memmap(part, mode="r+")
                    except (OSError, ValueError):
                        ok = False
                    else:
                        ok = mm.shape == tuple(shape) and mm.dtype == dtype
                if not ok:
                    mm = None
                    raise ValueError(f"out: the partial file {part!r} or its sidecar "
                                     f"{part_meta_path!r} is damaged; delete {part!r} and "
                                     f"{part_meta_path!r} to start over")
                start, n_cols = done, shape[1]

    # ---- run the model
    from tqdm.auto import tqdm

    if device is not None:
        device = torch.device(device)
        model.to(device)
    else:
        device = _model_device(model)
    captured = []

    def hook(_mod, _inp, output):
        captured.append(output)
        raise _StopForward

    handle = module.register_forward_hook(hook)
    was_training = model.training
    model.eval()
    result = None
    meta = dict(want)
    bar = tqdm(total=n, initial=start, unit="rows", desc=f"extract {layer_name}",
               disable=not progress)
    try:
        with torch.no_grad():
            row = start
            for x in (batches(start) if start < n else ()):
                if not isinstance(x, torch.Tensor):
                    x = torch.as_tensor(x)
                x = x.to(device)
                captured.clear()
                try:
                    model(x)
                except _StopForward:
                    pass
                if not captured:
                    raise RuntimeError(f"layer: {layer_name!r} was not called during "
                                       f"model's forward pass")
                feats = captured[0]
                if isinstance(feats, (tuple, list)) and feats:
                    feats = feats[0]
                if not isinstance(feats, torch.Tensor):
                    raise TypeError(f"layer: {layer_name!r} returned {type(feats).__name__}, "
                                    f"not a tensor")
                captured.clear()
                rows = _arrays.to_numpy(_pool(feats, pool, layer_name)).astype(dtype, copy=False)
                k = x.shape[0]
                if rows.shape[0] != k:
                    raise ValueError(f"layer: {layer_name!r} gave {rows.shape[0]} rows for a batch "
                                     f"of {k} samples; pick a layer that keeps the batch axis")
                if row + k > n:
                    raise ValueError(f"data: yielded more than its length ({n}) samples")
                if n_cols is None:
                    n_cols = rows.shape[1]
                    if final is None:
                        result = np.empty((n, n_cols), dtype=dtype)
                    else:
                        mm = np.lib.format.open_memmap(part, mode="w+", dtype=dtype,
                                                       shape=(n, n_cols))
                elif rows.shape[1] != n_cols:
                    raise ValueError(f"layer: {layer_name!r} gave {rows.shape[1]} features per "
                                     f"sample, expected {n_cols}"
                                     + ("" if final is None else
                                        f" (from the partial file {part!r}; delete it if the "
                                        f"model changed)"))
                target = result if final is None else mm
                target[row:row + k] = rows
                row += k
                if final is not None:
                    mm.flush()
                    meta.update(rows_done=row, shape=[n, n_cols], complete=row == n)
                    _write_json(part_meta_path, meta)
                bar.update(k)
            if row != n:
                raise ValueError(f"data: yielded {row} samples but its length is {n}")
    finally:
        bar.close()
        handle.remove()
        model.train(was_training)

    if final is None:
        return result
    mm.flush()
    del mm
    meta.update(rows_done=n, shape=[n, n_cols], complete=True)
    _write_json(part_meta_path, meta)
    os.replace(part, final)
    os.replace(part_meta_path, final_meta_path)
    return np.load(final, mmap_mode="r")


def _extract_sharded(model, data, layer, out, process_group, **kwargs) -> np.memmap:
    """Rank's share of :func:`extract_embeddings` across processes (:mod:`pydebias.data.shards`);
    returns this rank's rows as a read-only memmap."""
    import torch.distributed as dist

    from ..distributed import agree, all_reduce, check_group
    from .shards import local_part, shard_path, shard_rows, write_manifest

    check_group(process_group)
    if out is None:
        raise ValueError("out: extraction across processes writes shards; pass out='name.npy'")
    rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
    kwargs["progress"] = kwargs.get("progress", True) and rank == 0  # one bar, not one per rank
    error, arr, n = None, None, 0
    try:
        n = _plan(data, kwargs.get("batch_size", 256))[0]
        rows = shard_rows(n, rank, world)
        if rows.stop == rows.start:
            raise ValueError(f"data: {n} samples cannot give each of {world} ranks a row; use fewer ranks")
        arr = extract_embeddings(model, local_part(data, rows), layer, out=shard_path(out, rank, world),
                                 **kwargs)
    except Exception as e:  # noqa: BLE001 - raised on every rank by agree
        error = e
    agree(error, process_group)
    # every rank's shape, then rank 0 writes the manifest; the final reduction is the barrier
    shapes = np.zeros((world, 2), np.int64)
    shapes[rank] = arr.shape
    shapes = all_reduce(shapes, "sum", process_group)
    error = None
    if rank == 0:
        try:
            write_manifest(out, shapes, str(arr.dtype))
        except Exception as e:  # noqa: BLE001
            error = e
    agree(error, process_group)
    return arr
