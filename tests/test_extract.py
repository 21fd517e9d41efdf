"""extract_embeddings: hook outputs, pooling, memmap writes, resume after interruption, errors."""
import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pydebias.data.extract import extract_embeddings

N, BS = 37, 8  # last batch is partial on purpose


class TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(6, 5)
        self.head = torch.nn.Linear(5, 2)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.conv2(self.relu(self.conv1(x)))
        return self.head(self.fc(self.pool(h).flatten(1)))


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(N, 3, 6, 6, generator=g)


class FlakyDataset(Dataset):
    """(x, y) items; raises on item `fail_at` when set (a simulated crash)."""

    def __init__(self, x, fail_at=None):
        self.x, self.fail_at = x, fail_at

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.fail_at is not None and i >= self.fail_at:
            raise RuntimeError("simulated interruption")
        return self.x[i], i % 2


@pytest.mark.parametrize("pool", ["avg", "max", "flatten"])
def test_matches_manual_forward(pool):
    model, x = TinyCNN(), _inputs()
    got = extract_embeddings(model, x, "conv2", batch_size=BS, pool=pool, progress=False)
    with torch.no_grad():
        h = model.conv2(model.relu(model.conv1(x)))
    want = {"avg": h.mean(dim=(2, 3)), "max": h.amax(dim=(2, 3)),
            "flatten": h.flatten(1)}[pool].numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # a 2-D layer is taken as is; module objects work like names
    got_fc = extract_embeddings(model, x, model.fc, batch_size=BS, progress=False)
    with torch.no_grad():
        want_fc = model.fc(model.pool(h).flatten(1)).numpy()
    np.testing.assert_allclose(got_fc, want_fc, rtol=1e-5, atol=1e-6)


def test_input_kinds_and_modes_agree():
    model, x = TinyCNN(), _inputs()
    model.train()
    ref = extract_embeddings(model, x, "conv1", batch_size=BS, progress=False)
    assert model.training  # restored
    assert not model.conv1._forward_hooks  # hook removed
    ds = FlakyDataset(x)
    for data in (x.numpy(), ds, DataLoader(ds, batch_size=BS), TensorDataset(x)):
        got = extract_embeddings(model, data, "conv1", batch_size=BS, progress=False)
        np.testing.assert_array_equal(got, ref)
    f64 = extract_embeddings(model, x, "conv1", batch_size=BS, progress=False, dtype=np.float64)
    assert f64.dtype == np.float64


def test_memmap_equals_in_memory(tmp_path):
    model, x = TinyCNN(), _inputs()
    mem = extract_embeddings(model, FlakyDataset(x), "conv2", batch_size=BS, progress=False)
    path = str(tmp_path / "feats.npy")
    mm = extract_embeddings(model, FlakyDataset(x), "conv2", out=path, batch_size=BS, progress=False)
    assert isinstance(mm, np.memmap) and not mm.flags.writeable
    assert mm.tobytes() == mem.tobytes()
    assert np.load(path).tobytes() == mem.tobytes()
    assert not os.path.exists(path + ".partial") and not os.path.exists(path + ".partial.json")
    meta = json.load(open(path + ".json"))
    assert meta["rows_done"] == N and meta["shape"] == [N, 6] and meta["dtype"] == "float32"
    assert meta["layer"] == "conv2" and meta["pool"] == "avg" and meta["batch_size"] == BS
    # a second call reuses the file without running the model
    calls = model.calls
    again = extract_embeddings(model, FlakyDataset(x), "conv2", out=path, batch_size=BS,
                               progress=False)
    assert model.calls == calls and again.tobytes() == mem.tobytes()
    # same path, other settings: refused, not overwritten
    with pytest.raises(ValueError, match="other settings"):
        extract_embeddings(model, x, "conv2", out=path, batch_size=BS, pool="max", progress=False)


def test_resume_after_interruption(tmp_path):
    model, x = TinyCNN(), _inputs()
    clean = str(tmp_path / "clean.npy")
    extract_embeddings(TinyCNN(), FlakyDataset(x), "conv2", out=clean, batch_size=BS,
                       progress=False)

    path = str(tmp_path / "feats.npy")
    fail_at = 19  # inside the third batch: two batches (16 rows) complete
    with pytest.raises(RuntimeError, match="simulated interruption"):
        extract_embeddings(model, FlakyDataset(x, fail_at), "conv2", out=path, batch_size=BS,
                           progress=False)
    assert not os.path.exists(path) and not os.path.exists(path + ".json")
    assert os.path.exists(path + ".partial") and os.path.exists(path + ".partial.json")
    meta = json.load(open(path + ".partial.json"))
    assert meta["rows_done"] == 16 and not meta["complete"]
    assert model.calls == 2 and not model.conv2._forward_hooks

    # a mismatching rerun is refused and tells the user to delete the partial file
    with pytest.raises(ValueError, match="delete"):
        extract_embeddings(model, FlakyDataset(x), "conv2", out=path, batch_size=4,
                           progress=False)

    model.calls = 0
    out = extract_embeddings(model, FlakyDataset(x), "conv2", out=path, batch_size=BS,
                             progress=False)
    assert model.calls == 3  # batches 16:24, 24:32, 32:37 only; rows < 16 not recomputed
    with open(path, "rb") as a, open(clean, "rb") as b:
        assert a.read() == b.read()
    assert out.tobytes() == np.load(clean).tobytes()
    assert not os.path.exists(path + ".partial") and not os.path.exists(path + ".partial.json")
    assert json.load(open(path + ".json"))["rows_done"] == N


def test_resume_with_dataloader(tmp_path):
    model, x = TinyCNN(), _inputs()
    path = str(tmp_path / "feats.npy")
    with pytest.raises(RuntimeError):
        extract_embeddings(model, DataLoader(FlakyDataset(x, 10), batch_size=BS), "conv1",
                           out=path, progress=False)
    model.calls = 0
    out = extract_embeddings(model, DataLoader(FlakyDataset(x), batch_size=BS), "conv1",
                             out=path, progress=False)
    assert model.calls == 4
    ref = extract_embeddings(model, x, "conv1", batch_size=BS, progress=False)
    assert out.tobytes() == ref.tobytes()


def test_errors(tmp_path):
    model, x = TinyCNN(), _inputs()
    with pytest.raises(ValueError, match=r"no module named 'conv3'.*'conv1'"):
        extract_embeddings(model, x, "conv3", progress=False)
    with pytest.raises(ValueError, match="not a submodule"):
        extract_embeddings(model, x, torch.nn.ReLU(), progress=False)
    with pytest.raises(TypeError, match="layer"):
        extract_embeddings(model, x, 3, progress=False)
    with pytest.raises(ValueError, match="pool"):
        extract_embeddings(model, x, "conv1", pool="median", progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_embeddings(model, x[:0], "conv1", progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_embeddings(model, FlakyDataset(x[:0]), "conv1", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_embeddings(model, x, "conv1", batch_size=0, progress=False)
    with pytest.raises(ValueError, match="in order"):
        extract_embeddings(model, DataLoader(FlakyDataset(x), batch_size=4, shuffle=True),
                           "conv1", progress=False)
    with pytest.raises(TypeError, match="data"):
        extract_embeddings(model, object(), "conv1", progress=False)
    with pytest.raises(ValueError, match=".npy"):
        extract_embeddings(model, x, "conv1", out=str(tmp_path / "f.bin"), progress=False)

    class Seq(torch.nn.Module):  # 3-D (N, T, C) output: avg/max refuse, flatten works
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.proj(x)

    seq = torch.randn(5, 7, 3)
    with pytest.raises(ValueError, match="pool='avg'"):
        extract_embeddings(Seq(), seq, "proj", progress=False)
    assert extract_embeddings(Seq(), seq, "proj", pool="flatten", progress=False).shape == (5, 28)
    assert not model.conv1._forward_hooks
