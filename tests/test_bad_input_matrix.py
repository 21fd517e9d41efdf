"""The bad-input matrix: every public entry point × the kinds of bad input a user may
hand it. Each case asserts the exception type and that the message starts with the name
of the argument at fault (the "`arg`: expected X, got Y; do Z" convention)."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import pydebias
from pydebias import EmbeddingSet, cluster, evaluate, grouped_quantiles, mask_sweep, neuron_stats
from pydebias.data import extract_embeddings, load, planted
from pydebias.methods import AFR, DFR, ERM, JTT, NSF, REGISTRY, ClassBalanced, NeuronTune
from pydebias.methods.neurontune import neuron_deltas
from pydebias.nn import masked_linear
from pydebias.sketch import QuantileSketch

N, M = 20, 4
RNG = np.random.default_rng(0)
X = RNG.standard_normal((N, M)).astype(np.float32)
Y = np.repeat([0, 1], N // 2)
W, B = torch.randn(2, M), torch.zeros(2)


# -- features ------------------------------------------------------------------------------
FEATURE_TAKERS = {
    "neuron_stats": ("features", lambda x: neuron_stats(x, Y)),
    "grouped_quantiles": ("features", lambda x: grouped_quantiles(x, Y)),
    "mask_sweep": ("features", lambda x: mask_sweep(x, Y, W, B, torch.ones(1, M))),
    "EmbeddingSet": ("features", lambda x: EmbeddingSet(x, Y)),
    "kmeans": ("x", lambda x: cluster.kmeans(x, 2)),
    "nearest_centroid": ("x", lambda x: cluster.nearest_centroid(x, X[:2])),
    "class_means": ("x", lambda x: cluster.class_means(x, Y)),
    "dispersion": ("x", lambda x: cluster.dispersion(x, Y)),
    "QuantileSketch.update": ("features", lambda x: QuantileSketch(M).update(x)),
    "neuron_deltas": ("features", lambda x: neuron_deltas(x, Y, Y == 0, 2)),
    "masked_linear": ("x", lambda x: masked_linear(x, W, B, torch.ones(M))),
}
BAD_FEATURES = {
    "list": (lambda: X.tolist(), TypeError),
    "string": (lambda: "features.npy", TypeError),
    "None": (lambda: None, TypeError),
    "1-D": (lambda: X[:, 0].copy(), ValueError),
    "3-D": (lambda: X[:, :, None].copy(), ValueError),
    "int32": (lambda: X.astype(np.int32), TypeError),
    "bool": (lambda: X > 0, TypeError),
    "complex": (lambda: X.astype(np.complex64), TypeError),
    "object": (lambda: X.astype(object), TypeError),
    "int tensor": (lambda: torch.from_numpy(X.astype(np.int64)), TypeError),
    "meta tensor": (lambda: torch.empty(N, M, device="meta"), ValueError),
}


@pytest.mark.parametrize("kind", list(BAD_FEATURES))
@pytest.mark.parametrize("entry", list(FEATURE_TAKERS))
def test_bad_features(entry, kind):
    arg, call = FEATURE_TAKERS[entry]
    make, exc = BAD_FEATURES[kind]
    if entry == "masked_linear" and kind in ("1-D", "3-D"):
        pytest.skip("masked_linear takes any leading shape (..., M), as nn.Linear does")
    with pytest.raises(exc, match=rf"^{arg}: "):
        call(make())


# -- ids: labels, groups, concepts ---------------------------------------------------------------
ID_TAKERS = {
    "neuron_stats labels": ("labels", lambda ids: neuron_stats(X, ids)),
    "neuron_stats groups": ("groups", lambda ids: neuron_stats(X, groups=ids)),
    "grouped_quantiles groups": ("groups", lambda ids: grouped_quantiles(X, ids)),
    "mask_sweep labels": ("labels", lambda ids: mask_sweep(X, ids, W, B, torch.ones(1, M))),
    "mask_sweep groups": ("groups", lambda ids: mask_sweep(X, Y, W, B, torch.ones(1, M), groups=ids)),
    "EmbeddingSet labels": ("labels", lambda ids: EmbeddingSet(X, ids)),
    "EmbeddingSet groups": ("groups", lambda ids: EmbeddingSet(X, Y, groups=ids)),
    "EmbeddingSet concepts": ("concepts", lambda ids: EmbeddingSet(X, Y, concepts=ids)),
    "class_means labels": ("labels", lambda ids: cluster.class_means(X, ids)),
    "dispersion labels": ("labels", lambda ids: cluster.dispersion(X, ids)),
    "kmeans labels": ("labels", lambda ids: cluster.kmeans(X, 2, labels=ids)),
    "neuron_deltas labels": ("labels", lambda ids: neuron_deltas(X, ids, Y == 0, 2)),
}
BAD_IDS = {
    "float": (lambda: Y + 0.5, TypeError),
    "integer-valued float": (lambda: Y.astype(np.float64), TypeError),
    "negative": (lambda: Y - 1, ValueError),
    "too short": (lambda: Y[:5], ValueError),
    "2-D": (lambda: Y[:, None], ValueError),
    "strings": (lambda: Y.astype(str), TypeError),
    "huge id": (lambda: np.where(np.arange(N) == 0, 10**12, Y), ValueError),
}


@pytest.mark.parametrize("kind", list(BAD_IDS))
@pytest.mark.parametrize("entry", list(ID_TAKERS))
def test_bad_ids(entry, kind):
    arg, call = ID_TAKERS[entry]
    make, exc = BAD_IDS[kind]
    if entry.endswith("concepts") and kind == "huge id":
        pytest.skip("covered by 'concepts: expected 0/1' below")
    with pytest.raises(exc, match=rf"^{arg}: "):
        call(make())


def test_concepts_must_be_binary():
    with pytest.raises(ValueError, match="^concepts: expected 0/1"):
        EmbeddingSet(X, Y, concepts=Y * 2)


@pytest.mark.parametrize("entry, call", [
    ("neuron_stats", lambda: neuron_stats(X, groups=Y, n_groups=1)),
    ("neuron_stats n_classes", lambda: neuron_stats(X, Y, n_classes=1)),
    ("grouped_quantiles", lambda: grouped_quantiles(X, Y, n_groups=1)),
    ("EmbeddingSet n_classes", lambda: EmbeddingSet(X, Y, n_classes=1)),
    ("EmbeddingSet n_groups", lambda: EmbeddingSet(X, Y, groups=Y, n_groups=1)),
    ("mask_sweep", lambda: mask_sweep(X, Y, W, B, torch.ones(1, M), groups=Y, n_groups=1)),
    ("class_means", lambda: cluster.class_means(X, Y, n_classes=1)),
])
def test_counts_below_the_ids_are_named(entry, call):
    with pytest.raises(ValueError, match=r"^(labels|groups): ids must lie in \[0, 1\)"):
        call()


@pytest.mark.parametrize("value", [-1, 2.5, "4", True, 10**9])
@pytest.mark.parametrize("entry, arg, call", [
    ("neuron_stats", "n_groups", lambda v: neuron_stats(X, groups=Y, n_groups=v)),
    ("grouped_quantiles", "n_groups", lambda v: grouped_quantiles(X, Y, n_groups=v)),
    ("EmbeddingSet", "n_classes", lambda v: EmbeddingSet(X, Y, n_classes=v)),
    ("EmbeddingSet groups", "n_groups", lambda v: EmbeddingSet(X, Y, groups=Y, n_groups=v)),
])
def test_bad_counts(entry, arg, call, value):
    with pytest.raises(ValueError, match=rf"^{arg}: "):
        call(value)


@pytest.mark.parametrize("correct, exc", [(np.full(N, 0.5), ValueError), (np.ones(5, bool), ValueError)])
def test_bad_correct(correct, exc):
    with pytest.raises(exc, match="^correct: "):
        neuron_stats(X, Y, correct=correct)


# -- method hyper-parameters ----------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
BAD_PARAMS = [
    (ERM, "l2", NAN), (ERM, "l2", -1.0), (ERM, "l2", "small"), (ERM, "epochs", 0), (ERM, "epochs", -1),
    (ERM, "epochs", 2.5), (ERM, "optimizer", "sgd"), (ERM, "seed", "zero"),
    (JTT, "up_weight", NAN), (JTT, "up_weight", INF), (JTT, "up_weight", 0.5), (JTT, "id_epochs", 0),
    (JTT, "id_l2", -1.0), (JTT, "l2", NAN), (JTT, "epochs", 0),
    (AFR, "gamma", NAN), (AFR, "gamma", -1.0), (AFR, "l2", NAN), (AFR, "epochs", 0),
    (DFR, "l2_grid", ()), (DFR, "l2_grid", (NAN,)), (DFR, "l2_grid", (-1.0,)), (DFR, "epochs", 0),
    (ClassBalanced, "retrain_on", "test"), (ClassBalanced, "l2", NAN), (ClassBalanced, "epochs", 0),
    (NeuronTune, "retrain_on", "both"), (NeuronTune, "lam", NAN), (NeuronTune, "lam", "zero"),
    (NeuronTune, "mask_mode", "all"), (NeuronTune, "n_rounds", 0), (NeuronTune, "n_rounds", 1.5),
    (NeuronTune, "lam_margin", -5.0), (NeuronTune, "lam_margin", NAN), (NeuronTune, "l2", NAN),
    (NeuronTune, "epochs", 0), (NeuronTune, "holdout", -0.2), (NeuronTune, "holdout", 1.5),
    (NeuronTune, "holdout", NAN), (NeuronTune, "guard_tolerance", -1.0), (NeuronTune, "guard_tolerance", NAN),
    (NeuronTune, "holdout_max_rows", 0), (NeuronTune, "backend", "gpu"), (NeuronTune, "optimizer", "sgd"),
    (NSF, "alpha", NAN), (NSF, "alpha", -1.0), (NSF, "n_eliminate_steps", -1), (NSF, "n_eliminate_steps", 2.5),
    (NSF, "n_update_steps", -1), (NSF, "lr", 0.0), (NSF, "lr", NAN), (NSF, "k_clusters", 0),
    (NSF, "holdout", 1.0), (NSF, "holdout", -0.1), (NSF, "holdout", NAN), (NSF, "guard_tolerance", -1.0),
    (NSF, "kmeans_iter", 0), (NSF, "chunk_rows", 0),
]


@pytest.fixture(scope="module")
def small():
    d = planted(n_train=400, n_val=400, n_test=100, seed=0)
    return d, ERM().fit(d["train"])


@pytest.mark.parametrize("cls, param, value", BAD_PARAMS,
                         ids=[f"{c.__name__}-{p}={v!r}" for c, p, v in BAD_PARAMS])
def test_bad_hyper_parameters(small, cls, param, value):
    d, erm = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises((ValueError, TypeError), match=rf"^{param}: "):
            cls(**{param: value}).fit(d["train"], d["val"], head=erm)


# -- splits and heads, through the registry ---------------------------------------------------------
def _reads_val(spec):
    return spec.name not in ("erm", "classbalanced", "jtt")


BAD_CALLS = {
    "train not a set": (lambda d, erm: ((X, d["val"]), {"head": erm}), "train", TypeError),
    "val not a set": (lambda d, erm: ((d["train"], X), {"head": erm}), "val", TypeError),
    "val missing": (lambda d, erm: ((d["train"],), {"head": erm}), "val", ValueError),
    "head not a module": (lambda d, erm: ((d["train"], d["val"]), {"head": "erm"}), "head", TypeError),
    "head too narrow": (lambda d, erm: ((d["train"], d["val"]), {"head": nn.Linear(M, 2)}), "head", ValueError),
    "head one logit": (lambda d, erm: ((d["train"], d["val"]), {"head": nn.Linear(64, 1)}), "head", ValueError),
}


def _applies(spec, case):
    if case == "train not a set":
        return spec.name not in ("dfr", "neurontune-val", "classbalanced-val", "nsf", "afr")
    if case in ("val not a set", "val missing"):
        return _reads_val(spec)
    if case.startswith("head"):  # methods that read a head check it
        return spec.name in ("afr", "neurontune", "neurontune-val", "nsf") or (
            spec.name.startswith("classbalanced") and case != "head one logit")
    return True


@pytest.mark.parametrize("case", list(BAD_CALLS))
@pytest.mark.parametrize("name", list(REGISTRY))
def test_bad_splits_and_heads(small, name, case):
    spec = REGISTRY[name]
    if not _applies(spec, case):
        pytest.skip(f"{name} does not read that argument")
    d, erm = small
    make, arg, exc = BAD_CALLS[case]
    args, kwargs = make(d, erm)
    with pytest.raises(exc, match=rf"^{arg}: "):
        spec.make().fit(*args, **kwargs)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_empty_split(small, name):
    d, erm = small
    empty = d["val"].subset(np.zeros(len(d["val"]), bool))
    spec = REGISTRY[name]
    args = (d["train"], empty) if _reads_val(spec) and name != "classbalanced" else (empty, d["val"])
    with pytest.raises(ValueError, match=r"^(train|val): the set is empty"):
        spec.make().fit(*args, head=erm)


@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if s.reads_groups])
def test_group_labels_missing(small, name):
    d, erm = small
    blind = EmbeddingSet(d["val"].features, d["val"].labels)
    with pytest.raises(ValueError, match=r"^val: this method needs group labels"):
        REGISTRY[name].make().fit(d["train"], blind, head=erm)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_one_class_only(small, name):
    """A split with one class: fitted where the method can (the head still has 2 outputs
    where the ERM head has), else a message naming the split, never a crash inside torch."""
    d, erm = small
    one = d["train"].subset(d["train"].labels == 0)
    onev = d["val"].subset(d["val"].labels == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            head = REGISTRY[name].make().fit(one, onev, head=erm)
        except ValueError as e:
            assert str(e).split(":")[0] in ("train", "val", "head", "holdout", "labels"), str(e)
        else:
            assert isinstance(head, nn.Linear) and torch.isfinite(head.weight).all()


# -- evaluate and predict ----------------------------------------------------------------------------
@pytest.mark.parametrize("call, arg, exc", [
    (lambda d, erm: evaluate(erm, X), "eval_set", TypeError),
    (lambda d, erm: evaluate(np.zeros(3, np.int64), d["test"]), r"head_or_model \(predictions\)", ValueError),
    (lambda d, erm: evaluate(np.full(len(d["test"]), 0.5), d["test"]), r"head_or_model \(predictions\)",
     TypeError),
    (lambda d, erm: evaluate(np.full(len(d["test"]), -1), d["test"]), r"head_or_model \(predictions\)",
     ValueError),
    (lambda d, erm: evaluate(nn.Linear(64, 1), d["test"]), "head_or_model", ValueError),
    (lambda d, erm: evaluate("erm", d["test"]), "head_or_model", TypeError),
    (lambda d, erm: pydebias.metrics.predict(erm, d["test"].features, batch_size=0), "batch_size", ValueError),
], ids=["not a set", "short predictions", "float predictions", "negative predictions", "one logit",
        "not callable", "batch_size 0"])
def test_bad_evaluate(small, call, arg, exc):
    d, erm = small
    with pytest.raises(exc, match=rf"^{arg}: "):
        call(d, erm)


# -- extraction, loading, clustering arguments ----------------------------------------------------------
MODEL = nn.Sequential(nn.Linear(M, 3), nn.ReLU())


@pytest.mark.parametrize("kwargs, arg, exc", [
    ({"model": "net"}, "model", TypeError),
    ({"layer": "nope"}, "layer", ValueError),
    ({"layer": 3}, "layer", TypeError),
    ({"pool": "median"}, "pool", ValueError),
    ({"out": "feats.txt"}, "out", ValueError),
    ({"batch_size": 0}, "batch_size", ValueError),
    ({"dtype": np.int32}, "dtype", TypeError),
    ({"data": torch.empty(0, M)}, "data", ValueError),
    ({"data": 3.0}, "data", TypeError),
])
def test_bad_extraction(tmp_path, kwargs, arg, exc):
    args = {"model": MODEL, "data": torch.from_numpy(X), "layer": "1", "progress": False}
    args.update(kwargs)
    if "out" in kwargs:
        args["out"] = str(tmp_path / kwargs["out"])
    with pytest.raises(exc, match=rf"^{arg}: "):
        extract_embeddings(**args)


@pytest.mark.parametrize("name, params, arg", [
    ("nope", {}, "name"), ("planted", {"bogus": 1}, "bogus"), ("planted", {"n_train": "many"}, "n_train"),
    ("planted", {"corr": "high"}, "corr"), ("planted", {"n_val": 2.5}, "n_val"),
])
def test_bad_load(name, params, arg):
    with pytest.raises(ValueError, match=rf"^{arg}: "):
        load(name, **params)


@pytest.mark.parametrize("call, arg", [
    (lambda: cluster.kmeans(X, 0), "k"), (lambda: cluster.kmeans(X, 2.5), "k"), (lambda: cluster.kmeans(X, N + 1), "k"),
    (lambda: cluster.kmeans(X, 2, n_iter=0), "n_iter"), (lambda: cluster.kmeans(X, 2, sample_size=0), "sample_size"),
    (lambda: cluster.kmeans(X, 2, init=np.zeros((3, M), np.float32)), "init"),
    (lambda: cluster.kmeans(X, 2, gpu="yes"), "gpu"),
    (lambda: cluster.nearest_centroid(X, np.zeros((2, M + 1), np.float32)), "centroids"),
    (lambda: cluster.nearest_centroid(X, np.zeros((0, M), np.float32)), "centroids"),
    (lambda: cluster.dispersion(X, Y, means=np.zeros((3, M))), "means"),
    (lambda: neuron_stats(X, Y, backend="gpu"), "backend"),
    (lambda: neuron_stats(X, Y, quantiles=(1.5,)), "quantiles"),
    (lambda: neuron_stats(X, Y, quantile_method="nearest"), "quantile_method"),
    (lambda: mask_sweep(X, Y, W, B, torch.ones(1, M + 1)), "masks"),
    (lambda: mask_sweep(X, Y, W[:, :2], B, torch.ones(1, M)), "weight"),
    (lambda: masked_linear(torch.from_numpy(X), W, B, torch.ones(M + 1)), "mask"),
])
def test_bad_other_arguments(call, arg):
    with pytest.raises((ValueError, TypeError), match=rf"^{arg}: "):
        call()
