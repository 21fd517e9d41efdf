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
