"""Embedding-level methods fitted from an np.memmap: the same result as in memory, row
subsets and z-scores in scratch memmaps (not in memory), scratch files never left behind."""
import warnings

import numpy as np
import pytest
import torch

import pydebias._arrays as arrays
from pydebias import EmbeddingSet
from pydebias.data import planted
from pydebias.methods import AFR, DFR, ERM, NSF


def _as_memmap(s: EmbeddingSet, path) -> EmbeddingSet:
    x = np.asarray(s.features)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=x.dtype, shape=x.shape)
    mm[:] = x
    mm.flush()
    return EmbeddingSet(np.load(path, mmap_mode="r"), s.labels, s.groups, n_groups=s.n_groups)


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    """A scratch folder, and every array derived from a memmap sent there (however small)."""
    d = tmp_path / "scratch"
    d.mkdir()
    monkeypatch.setenv("PYDEBIAS_SCRATCH", str(d))
    monkeypatch.setattr(arrays, "SCRATCH_MIN_BYTES", 0)
    return d


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_subset_of_a_memmap_is_a_scratch_memmap_with_the_same_rows(tmp_path, scratch, monkeypatch, dtype):
    rng = np.random.default_rng(0)
    s = EmbeddingSet(rng.standard_normal((500, 7)).astype(dtype), rng.integers(0, 3, 500))
    mm = _as_memmap(s, tmp_path / "x.npy")
    idx = np.sort(rng.choice(500, 123, replace=False))
    sub = mm.subset(idx)
    assert isinstance(sub.features, np.memmap) and sub.features.dtype == dtype
    np.testing.assert_array_equal(np.asarray(sub.features), np.asarray(s.features)[idx])
    np.testing.assert_array_equal(sub.labels, s.labels[idx])
    assert list(scratch.iterdir()) == []  # unlinked at once; the mapping keeps the data
    empty = mm.subset(np.zeros(500, dtype=bool))
    assert empty.features.shape == (0, 7)
    # an in-memory set still copies into memory, and so do small subsets of a memmap
    assert not isinstance(s.subset(idx).features, np.memmap)
    monkeypatch.setattr(arrays, "SCRATCH_MIN_BYTES", 122 * 7 * np.dtype(dtype).itemsize)  # 122 rows fit
    assert isinstance(mm.subset(idx).features, np.memmap)
    assert not isinstance(mm.subset(idx[:-1]).features, np.memmap)


def test_a_missing_scratch_folder_is_named(tmp_path, monkeypatch):
    s = EmbeddingSet(np.ones((10, 3), np.float32), np.arange(10) % 2)
    mm = _as_memmap(s, tmp_path / "x.npy")
    monkeypatch.setenv("PYDEBIAS_SCRATCH", str(tmp_path / "nope"))
    monkeypatch.setattr(arrays, "SCRATCH_MIN_BYTES", 0)
    with pytest.raises(ValueError, match="PYDEBIAS_SCRATCH"):
        mm.subset(np.arange(5))


@pytest.fixture(scope="module")
def data():
    return planted(n_train=1500, n_val=1200, n_test=200, seed=3)


@pytest.mark.parametrize("standardize", [True, False])
def test_nsf_from_a_memmap_equals_nsf_in_memory(data, tmp_path, scratch, monkeypatch, standardize):
    import pydebias.methods.nsf as nsf_mod

    head = ERM(seed=0).fit(data["train"])
    kw = dict(n_eliminate_steps=5, n_update_steps=30, seed=1, standardize=standardize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = NSF(**kw).fit(data["train"], data["val"], head=head)
        mm = _as_memmap(data["val"], tmp_path / "val.npy")
        # every group read in chunks of 100 rows at every update step, not held
        monkeypatch.setattr(nsf_mod, "UPDATE_CACHE_BYTES", 0)
        m = NSF(chunk_rows=100, **kw)
        got = m.fit(data["train"], mm, head=head)
    assert m.report_["counts"]["rescued"] > 0 and m.report_["counts"]["inliers"] > 0
    torch.testing.assert_close(got.weight, ref.weight, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.bias, ref.bias, rtol=1e-4, atol=1e-5)
    assert list(scratch.iterdir()) == []


def test_dfr_and_afr_from_a_memmap_equal_the_in_memory_fits(data, tmp_path, scratch):
    head = ERM(seed=0).fit(data["train"])
    mm = _as_memmap(data["val"], tmp_path / "val.npy")
    for make in (lambda: DFR(l2_grid=(1e-3, 1e-1), epochs=30), lambda: AFR(gammas=(0.0, 4.0), epochs=30)):
        ref, got = make(), make()
        ref_head = ref.fit(data["train"], data["val"], head=head)
        got_head = got.fit(data["train"], mm, head=head)
        assert ref.report_.get("l2") == got.report_.get("l2")
        assert ref.report_.get("gamma") == got.report_.get("gamma")
        torch.testing.assert_close(got_head.weight, ref_head.weight, rtol=1e-2, atol=2e-3)
    assert list(scratch.iterdir()) == []


def test_the_memmap_methods_bench_reports_memory_and_cleans_up(tmp_path):
    from pydebias.tools.bench_ooc import bench_methods_memmap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = bench_methods_memmap(n=3000, m=32, directory=str(tmp_path), epochs=2, n_update_steps=3)
    assert [r["impl"].split(",")[0] for r in rows] == ["DFR", "NSF", "AFR"]
    for r in rows:
        assert r["file_bytes"] == 3000 * 32 * 2 and r["seconds"] > 0 and r["peak_anonymous_bytes"] > 0
        assert 0.0 <= r["worst_group_accuracy"] <= 1.0
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="methods"):
        bench_methods_memmap(n=10, m=4, methods=("JTT",))


def test_scratch_of_zero_rows_needs_no_file(scratch):
    out = arrays.scratch_array((0, 5), np.float16)
    assert out.shape == (0, 5) and list(scratch.iterdir()) == []
