"""neuron_stats across gloo processes on loopback equals the single-process result."""
import numpy as np
import pytest
import torch.distributed as dist

from pydebias import EmbeddingSet, neuron_stats
from pydebias.distributed import run_local

LEVELS = (0.5, 0.1, 0.9, 0.0, 1.0)


def _data(kind, n=3000, m=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, m)).astype(np.float32)
    y = rng.integers(0, 4, n)
    ok = rng.random(n) < 0.7
    if kind == "ties":
        x = np.round(x * 2) / 2  # few distinct values
    elif kind == "relu":
        x = np.maximum(x, 0)  # a point mass at zero in every column
    elif kind == "offset":
        x = (x.astype(np.float64) * 1e-3 + 1e8)  # huge offset, float64
    elif kind == "inf":
        x[rng.random((n, m)) < 0.01] = np.inf
        x[rng.random((n, m)) < 0.01] = -np.inf
    elif kind == "sorted":  # shards far from identically distributed: each rank a slice of the range
        x = np.sort(x, axis=0)
    return x, y, ok


def _shard(n, rank, world):
    return slice(rank * n // world, (rank + 1) * n // world)


KINDS = ("normal", "ties", "relu", "offset", "inf", "sorted", "overflow")


def _rows(kind, rank, world):
    """This rank's rows; "normal" also leaves class 3 out of rank 0's shard."""
    x, y, ok = _data("normal" if kind == "overflow" else kind)
    sl = _shard(len(x), rank, world)
    xs, ys, oks = x[sl], y[sl], ok[sl]
    if kind == "normal" and rank == 0:
        keep = ys != 3
        xs, ys, oks = xs[keep], ys[keep], oks[keep]
    return xs, ys, oks


def _stats_worker(rank, world):
    import pydebias.stats as S

    def no_room(expect, wide, G):  # keep regions of size 0: every cell with a value inside its bracket overflows
        Q, _, m = expect.shape
        return (np.zeros((3, Q, G, m), np.int64), np.empty(1, np.float64 if wide else np.float32),
                np.zeros(Q * G * m + 1, np.int64), np.zeros(Q * G * m, np.int64))

    out = {}
    for kind in KINDS:
        if kind == "overflow":  # ... and takes the fallback selection over its column's rows
            S._keep_space = no_room
        s = neuron_stats(*_rows(kind, rank, world), quantiles=LEVELS, process_group=dist.group.WORLD)
        out[kind] = {"count": s.count, "mean": s.mean, "var": s.var, "min": s.min, "max": s.max,
                     "q": {q: (s.quantile(q, "lower"), s.quantile(q, "higher")) for q in LEVELS}}
    x, y, ok = _rows("ties", rank, world)
    if rank == world - 1:
        x = x.copy()
        x[5, 3] = np.nan  # on one rank only: every rank must raise, none may wait forever
    try:
        neuron_stats(x, y, ok, process_group=dist.group.WORLD)
    except ValueError as e:
        out["nan_error"] = str(e)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_distributed_stats_equal_one_process(world):
    outs = run_local(_stats_worker, world)
    assert "NaN" in outs[-1]["nan_error"]
    assert all(f"rank {world - 1}" in o["nan_error"] for o in outs[:-1])
    for kind in KINDS:
        x, y, ok = (np.concatenate(parts) for parts in zip(*(_rows(kind, r, world) for r in range(world))))
        ref = neuron_stats(x, y, ok, quantiles=LEVELS)
        for out in outs:  # every rank holds the same, global, result
            got = out[kind]
            np.testing.assert_array_equal(got["count"], ref.count, err_msg=kind)
            np.testing.assert_array_equal(got["min"], ref.min, err_msg=kind)
            np.testing.assert_array_equal(got["max"], ref.max, err_msg=kind)
            for q in LEVELS:
                np.testing.assert_array_equal(got["q"][q][0], ref.quantile(q, "lower"), err_msg=f"{kind} {q}")
                np.testing.assert_array_equal(got["q"][q][1], ref.quantile(q, "higher"), err_msg=f"{kind} {q}")
            np.testing.assert_allclose(got["mean"], ref.mean, rtol=1e-12, atol=1e-12, err_msg=kind)
            np.testing.assert_allclose(got["var"], ref.var, rtol=1e-9, atol=1e-15, err_msg=kind)


def _neurontune_worker(rank, world, erm):
    from pydebias.data import planted
    from pydebias.methods import NeuronTune

    d = planted(n_train=4000, n_val=3000, n_test=100, val_corr=0.5, seed=1)
    v = d["val"]
    sl = _shard(len(v), rank, world)
    shard = EmbeddingSet(np.asarray(v.features)[sl], np.asarray(v.labels)[sl])
    nt = NeuronTune(lam=0.0, holdout=0.0, process_group=dist.group.WORLD)
    head = nt.fit(d["train"], shard, head=erm)
    return {"weight": head.weight.detach().numpy(), "bias": head.bias.detach().numpy(),
            "spurious": nt.spurious_neurons(), "ranks": nt.report_["params"]["process_group"]}


@pytest.mark.parametrize("world", [2, 4])
def test_neurontune_across_ranks_selects_what_one_process_selects(world):
    from pydebias.data import planted
    from pydebias.methods import ERM, NeuronTune

    d = planted(n_train=4000, n_val=3000, n_test=100, val_corr=0.5, seed=1)
    erm = ERM().fit(d["train"])
    nt = NeuronTune(lam=0.0, holdout=0.0)
    ref = nt.fit(d["train"], d["val"], head=erm)
    assert nt.spurious_neurons().size > 0
    for out in run_local(_neurontune_worker, world, erm):
        np.testing.assert_array_equal(out["spurious"], nt.spurious_neurons())
        np.testing.assert_allclose(out["weight"], ref.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["bias"], ref.bias.detach().numpy(), rtol=1e-5, atol=1e-6)
        assert out["ranks"] == f"{world} ranks"


def test_distributed_bench_reports_its_ratio():
    from pydebias.tools.bench_distributed import bench_distributed_medians

    row, = bench_distributed_medians(world=2, n=3000, m=16, repeat=1)
    assert row["x_local_pass"] == row["seconds"] / row["local_seconds"] > 0 and len(row["per_rank"]) == 2


def test_process_group_needs_an_initialised_group_and_the_supported_settings():
    from pydebias.data import planted
    from pydebias.methods import NeuronTune

    x, y, ok = _data("normal", n=200)
    with pytest.raises(RuntimeError, match="init_process_group"):
        neuron_stats(x, y, ok, process_group=object())
    d = planted(n_train=500, n_val=300, n_test=50, seed=0)
    with pytest.raises(ValueError, match="process_group"):
        NeuronTune(process_group=object(), lam=0.0).fit(d["train"], d["val"])
    from pydebias.methods import DFR, NSF

    for method in (DFR(process_group=object()), NSF(process_group=object(), holdout=0.0)):
        with pytest.raises(RuntimeError, match="init_process_group"):
            method.fit(d["train"], d["val"])


def _planted_shard(rank, world, groups=False, seed=2):
    from pydebias.data import planted

    v = planted(n_train=2000, n_val=3000, n_test=100, val_corr=0.7, seed=seed)["val"]
    sl = _shard(len(v), rank, world)
    if rank == 0:  # rank 0 has no row of group 3: counts and weights must still be global
        keep = np.flatnonzero(v.groups[sl] != 3) + sl.start
    else:
        keep = np.arange(sl.start, sl.stop)
    return v.subset(keep) if groups else EmbeddingSet(np.asarray(v.features)[keep], v.labels[keep])


def _concat(world, groups=False):
    parts = [_planted_shard(r, world, groups) for r in range(world)]
    return EmbeddingSet(np.concatenate([np.asarray(p.features) for p in parts]),
                        np.concatenate([p.labels for p in parts]),
                        np.concatenate([p.groups for p in parts]) if groups else None,
                        n_groups=parts[0].n_groups if groups else None)


def _fits_worker(rank, world, erm):
    import warnings

    from pydebias.methods import DFR, NSF

    g = dist.group.WORLD
    out = {}
    dfr_one = DFR(l2_grid=(1e-3,), epochs=40, process_group=g)
    out["dfr_one"] = dfr_one.fit(None, _planted_shard(rank, world, groups=True))
    dfr = DFR(l2_grid=(1e-4, 1e-1), epochs=40, process_group=g)
    out["dfr_grid"] = dfr.fit(None, _planted_shard(rank, world, groups=True))
    out["dfr_report"] = dfr.report_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nsf = NSF(holdout=0.0, n_eliminate_steps=5, n_update_steps=40, seed=1, chunk_rows=256, process_group=g)
        out["nsf"] = nsf.fit(None, _planted_shard(rank, world), head=erm)
    out["nsf_counts"] = nsf.report_["counts"]
    out["nsf_losses"] = (nsf.report_["eliminate_loss"], nsf.report_["update_loss"])
    return {k: ((v.weight.detach().numpy(), v.bias.detach().numpy()) if hasattr(v, "weight") else v)
            for k, v in out.items()}


@pytest.mark.parametrize("world", [2, 4])
def test_dfr_and_nsf_across_ranks_fit_what_one_process_fits(world):
    import warnings

    from pydebias.data import planted
    from pydebias.methods import DFR, ERM, NSF

    erm = ERM().fit(planted(n_train=2000, n_val=3000, n_test=100, val_corr=0.7, seed=2)["train"])
    union = _concat(world, groups=True)
    ref_one = DFR(l2_grid=(1e-3,), epochs=40).fit(None, union)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        nsf = NSF(holdout=0.0, n_eliminate_steps=5, n_update_steps=40, seed=1, chunk_rows=256)
        ref_nsf = nsf.fit(None, _concat(world), head=erm)
    assert nsf.report_["counts"]["rescued"] > 0 and nsf.report_["counts"]["inliers"] > 0
    outs = run_local(_fits_worker, world, erm)
    for out in outs:
        # L-BFGS stops on a change of the loss below 1e-10: flat directions of the
        # objective leave the weights ~5e-4 apart for a different summation order
        np.testing.assert_allclose(out["dfr_one"][0], ref_one.weight.detach().numpy(), rtol=1e-2, atol=2e-3)
        np.testing.assert_allclose(out["dfr_one"][1], ref_one.bias.detach().numpy(), rtol=1e-2, atol=2e-3)
        assert out["nsf_counts"] == nsf.report_["counts"]
        np.testing.assert_allclose(out["nsf_losses"][0], nsf.report_["eliminate_loss"], rtol=1e-5)
        np.testing.assert_allclose(out["nsf_losses"][1], nsf.report_["update_loss"], rtol=1e-4)
        np.testing.assert_allclose(out["nsf"][0], ref_nsf.weight.detach().numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["nsf"][1], ref_nsf.bias.detach().numpy(), rtol=1e-4, atol=1e-5)
        # the grid fit: the same choice and head on every rank, group counts of the union
        assert out["dfr_report"]["l2"] == outs[0]["dfr_report"]["l2"]
        assert out["dfr_report"]["group_counts"] == np.bincount(_concat(world, True).groups).tolist()
        np.testing.assert_array_equal(out["dfr_grid"][0], outs[0]["dfr_grid"][0])


def _bad_rank_worker(rank, world):
    """Each case breaks rank 1's input only; returns what every rank raised."""
    import torch

    from pydebias.methods import DFR, NSF
    from pydebias.nn import train_linear_head

    g = dist.group.WORLD
    v = _planted_shard(rank, world, groups=True)
    bad = rank == 1
    empty = v.subset(np.zeros(0, np.int64))
    cases = {
        "dfr_empty": lambda: DFR(l2_grid=(1e-3,), epochs=5, process_group=g).fit(None, empty if bad else v),
        "dfr_no_groups": lambda: DFR(l2_grid=(1e-3,), epochs=5, process_group=g).fit(
            None, EmbeddingSet(np.asarray(v.features), v.labels) if bad else v),
        "nsf_empty": lambda: NSF(holdout=0.0, n_update_steps=5, process_group=g).fit(
            None, empty if bad else v, head=torch.nn.Linear(v.n_features, 2)),
        "head_labels": lambda: train_linear_head(np.asarray(v.features), v.labels + (5 if bad else 0), 2,
                                                 epochs=5, process_group=g),
        "head_weights": lambda: train_linear_head(np.asarray(v.features), v.labels, 2, epochs=5, process_group=g,
                                                  sample_weight=np.ones(len(v) + (3 if bad else 0))),
    }
    out = {}
    for name, fn in cases.items():
        try:
            fn()
            out[name] = None
        except ValueError as e:
            out[name] = str(e)
    return out


def test_a_bad_input_on_one_rank_raises_on_every_rank():
    """A check that fails on one rank's rows alone must not leave the other ranks waiting
    in a reduction: every rank raises, the bad rank its own error, the others naming it."""
    outs = run_local(_bad_rank_worker, 2, timeout=120)
    own = {"dfr_empty": "val: the set is empty", "dfr_no_groups": "needs group labels",
           "nsf_empty": "val: the set is empty", "head_labels": "labels: found class",
           "head_weights": "sample_weight: expected shape"}
    for name, msg in own.items():
        assert msg in outs[1][name], (name, outs[1][name])
        assert outs[0][name] is not None and "rank 1" in outs[0][name], (name, outs[0][name])


def _tiny_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.ReLU(), torch.nn.Linear(9, 2))


def _extract_worker(rank, world, out):
    import torch

    from pydebias.data import extract_embeddings

    x = torch.randn(53, 6, generator=torch.Generator().manual_seed(1))
    arr = extract_embeddings(_tiny_model(), x, "1", out=out, batch_size=8, progress=False,
                             process_group=dist.group.WORLD)
    return np.asarray(arr)


@pytest.mark.parametrize("world", [2, 4])
def test_data_parallel_extraction_writes_shards_and_a_manifest_read_as_one_set(world, tmp_path):
    import torch

    from pydebias.data import extract_embeddings
    from pydebias.data import open_shards, read_manifest, shard_rows

    out = str(tmp_path / "feats.npy")
    parts = run_local(_extract_worker, world, out)
    x = torch.randn(53, 6, generator=torch.Generator().manual_seed(1))
    ref = extract_embeddings(_tiny_model(), x, "1", batch_size=8, progress=False)
    manifest = str(tmp_path / "feats.manifest.json")
    meta = read_manifest(manifest)
    assert meta["shape"] == [53, 9] and len(meta["shards"]) == world
    for r, part in enumerate(parts):  # each rank got its own block back, in rank order
        np.testing.assert_array_equal(part, ref[shard_rows(53, r, world)])
        np.testing.assert_array_equal(open_shards(manifest, rank=r), part)
    np.testing.assert_array_equal(open_shards(manifest), ref)
    one = open_shards(manifest, out=str(tmp_path / "all.npy"))
    assert isinstance(one, np.memmap)
    np.testing.assert_array_equal(one, ref)
    assert not (tmp_path / "all.partial.npy").exists()
    # a second run finds every shard complete and recomputes nothing
    again = run_local(_extract_worker, world, out)
    for a, b in zip(again, parts):
        np.testing.assert_array_equal(a, b)
    (tmp_path / f"feats.rank{world - 1}-of-{world}.npy").unlink()
    with pytest.raises(ValueError, match="missing"):
        open_shards(manifest)
    with pytest.raises(ValueError, match="rank"):
        open_shards(str(tmp_path / "feats.manifest.json"), rank=world)


# -- the native radix kernels against numpy ------------------------------------------

def _csr(rng, n_cells, dtype, kind):
    sizes = rng.integers(0, 40, n_cells)
    sizes[0] = 0  # an empty cell
    gaps = rng.integers(0, 5, n_cells)  # regions need not touch (a keep buffer has slack)
    off = np.concatenate([[0], np.cumsum(sizes + gaps)])[:-1].astype(np.int64)
    vals = rng.standard_normal(int(off[-1] + sizes[-1] + gaps[-1])).astype(dtype)
    if kind == "ties":
        vals = np.round(vals * 2) / 2
    elif kind == "inf":
        vals[rng.random(vals.size) < 0.1] = np.inf
        vals[rng.random(vals.size) < 0.1] = -np.inf
    elif kind == "offset":
        vals = (vals.astype(np.float64) * 1e-3 + 1e8).astype(dtype)
    return vals, off, sizes.astype(np.int64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["normal", "ties", "inf", "offset"])
def test_radix_kernels_match_numpy(dtype, kind):
    from pydebias.backends import native
    from pydebias.distributed import keys

    lib = native()
    rng = np.random.default_rng(5)
    vals, off, live = _csr(rng, 60, dtype, kind)
    ref, bits = keys(vals)
    got = np.empty_like(ref)
    lib.radix_keys(vals, got)
    np.testing.assert_array_equal(got, ref)
    kmin, kmax = np.empty(60, ref.dtype), np.empty(60, ref.dtype)
    lib.key_range(got, off, live, kmin, kmax)
    for c in range(1, 60):
        if live[c]:
            seg = ref[off[c]:off[c] + live[c]]
            assert kmin[c] == seg.min() and kmax[c] == seg.max()
    # one round at the top digit of each cell's span, then the next: counts and survivors
    base, span = kmin.copy(), np.where(live > 0, kmax - kmin, 0).astype(ref.dtype)
    prefix = np.zeros(60, ref.dtype)
    keys_copy, lv = got.copy(), live.copy()
    for shift in (bits - 8, bits - 16):
        hist = np.zeros(60 * 256, np.int32)
        before = [keys_copy[off[c]:off[c] + lv[c]].copy() for c in range(60)]
        lib.radix_round(keys_copy, off, lv, base, span, prefix, shift, 8, hist)
        dt = ref.dtype.type
        for c in range(60):
            r = (before[c] - base[c]).astype(ref.dtype)
            decided = dt(0) if shift + 8 >= bits else dt((~dt(0)) << dt(shift + 8))
            keep = (r & decided) == (prefix[c] & decided)
            want = np.bincount(((r[keep] >> dt(shift)) & dt(255)).astype(np.int64), minlength=256)
            np.testing.assert_array_equal(hist[c * 256:(c + 1) * 256], want)
            np.testing.assert_array_equal(keys_copy[off[c]:off[c] + lv[c]], before[c][keep])
        # the digit of each cell's middle key
        k = (lv // 2).astype(np.int64)
        k_ref, p_ref = k.copy(), prefix.copy()
        lib.radix_choose(hist, 8, shift, k, prefix)
        cum = np.cumsum(hist.reshape(60, 256), axis=1)
        for c in np.flatnonzero(lv):
            d = int(np.argmax(cum[c] > k_ref[c]))
            assert prefix[c] == p_ref[c] | (dt(d) << dt(shift))
            assert k[c] == k_ref[c] - (cum[c, d - 1] if d else 0)
    # bracket counts, including +-inf bounds, and the NaN count
    lo = np.where(rng.random(60) < 0.2, -np.inf, rng.standard_normal(60))
    hi = np.where(rng.random(60) < 0.2, np.inf, lo + 1.0)
    out = np.zeros((4, 60), np.int64)
    assert lib.count_bracket(vals, off, live, lo, hi, out) == 0
    for c in range(60):
        v = vals[off[c]:off[c] + live[c]].astype(np.float64)
        assert list(out[:, c]) == [(v < lo[c]).sum(), (v <= lo[c]).sum(), (v < hi[c]).sum(), (v <= hi[c]).sum()]
    if live[1]:
        vals[off[1]] = np.nan
        assert lib.count_bracket(vals, off, live, lo, hi, out) == 1
    with pytest.raises(ValueError, match="outside"):
        lib.count_bracket(vals, off, live + 10_000, lo, hi, out)


def _select_worker(rank, world):
    from pydebias.distributed import all_reduce, radix_select_csr

    g = dist.group.WORLD
    out = {}
    for dtype in (np.float32, np.float64):
        for kind in ("normal", "ties", "inf", "offset"):
            vals, off, live = _csr(np.random.default_rng(10 + rank), 50, dtype, kind)
            total = all_reduce(live, "sum", g)
            rng = np.random.default_rng(99)  # the same targets on every rank
            tgt = np.stack([np.where(total > 0, (rng.random(50) * total).astype(np.int64), -1) for _ in range(2)])
            tgt[1, 3] = -1  # a cell one selection skips
            out[(dtype.__name__, kind)] = (radix_select_csr(vals, off, live, tgt, g),
                                           radix_select_csr(vals, off, live, tgt, g, native=False), tgt)
    return out


def test_native_radix_select_equals_the_reference_across_ranks():
    outs = run_local(_select_worker, 2)
    for key in outs[0]:
        dtype, kind = key
        parts = [_csr(np.random.default_rng(10 + r), 50, np.dtype(dtype).type, kind) for r in range(2)]
        for out in outs:
            fast, ref, tgt = out[key]
            np.testing.assert_array_equal(fast, ref, err_msg=str(key))
            for j in range(2):
                for c in range(50):
                    if tgt[j, c] < 0:
                        assert np.isnan(fast[j, c])
                        continue
                    union = np.sort(np.concatenate([v[o[c]:o[c] + lv[c]] for v, o, lv in parts]).astype(np.float64))
                    assert fast[j, c] == union[tgt[j, c]], (key, j, c)
