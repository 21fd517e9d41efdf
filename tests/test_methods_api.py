"""One call shape per method family, one registry, one model protocol."""
import os
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pydebias import EmbeddingSet, evaluate
from pydebias.data import planted
from pydebias.methods import ERM, REGISTRY, EmbeddingMethod, ModelMethod, methods_markdown
from pydebias.models import EncoderHead, SmallCNN, TabularMLP

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def bench():
    d = planted(n_train=4000, n_val=2000, n_test=2000, seed=0)
    return d, ERM().fit(d["train"])


def _state(head):
    return {k: v.clone() for k, v in head.state_dict().items()}


def test_every_registered_method_runs_through_one_loop(bench):
    d, erm = bench
    before = _state(erm)
    heads = {}
    for name, spec in REGISTRY.items():
        method = spec.make(seed=0)
        assert isinstance(method, EmbeddingMethod) and spec.family == "embedding"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the guard's verdicts
            head = method.fit(d["train"], d["val"], head=erm)
        assert isinstance(head, nn.Linear) and head.in_features == 64 and head.out_features == 2, name
        assert head is not erm, f"{name}: the result aliases the caller's ERM head"
        assert isinstance(method.report_, dict) and method.report_, name
        learned = [k for k in vars(method) if k.endswith("_")]
        assert "head_" in learned and "report_" in learned, name
        assert set(vars(method)) - set(learned) == set(method.get_params()), name  # no other state
        heads[name] = head
    assert all(torch.equal(v, _state(erm)[k]) for k, v in before.items())  # erm untouched
    wga = {n: evaluate(h, d["test"]).worst_group_accuracy for n, h in heads.items()}
    # the loop really ran each method: DFR and JTT lift the worst group over ERM
    assert wga["dfr"] > wga["erm"] + 0.2 and wga["jtt"] > wga["erm"] + 0.2


def test_only_methods_marked_as_reading_groups_read_them(bench):
    d, erm = bench
    blind = {s: EmbeddingSet(d[s].features, d[s].labels, n_classes=2) for s in ("train", "val")}
    for name, spec in REGISTRY.items():
        if spec.reads_groups:
            with pytest.raises(ValueError, match="group labels"):
                spec.make().fit(blind["train"], blind["val"], head=erm)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            a = spec.make(seed=1).fit(d["train"], d["val"], head=erm)
            b = spec.make(seed=1).fit(blind["train"], blind["val"], head=erm)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias), name


def test_variants_are_parameters_not_names():
    nt, ntv = REGISTRY["neurontune"].make(), REGISTRY["neurontune-val"].make()
    assert type(nt) is type(ntv) and nt.retrain_on == "train" and ntv.retrain_on == "val"
    assert REGISTRY["classbalanced-val"].make().get_params()["retrain_on"] == "val"
    assert all(n.isascii() and " " not in n for n in REGISTRY)
    assert {n for n, s in REGISTRY.items() if s.guarded} == {"neurontune", "neurontune-val", "nsf"}


def test_a_method_needing_a_head_trains_erm_on_train_when_none_is_given(bench):
    d, erm = bench
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        given = REGISTRY["afr"].make().fit(d["train"], d["val"], head=erm)
        trained = REGISTRY["afr"].make().fit(d["train"], d["val"])
    assert torch.equal(given.weight, trained.weight)  # ERM is seeded: the same head
    with pytest.raises(ValueError, match="val"):
        REGISTRY["afr"].make().fit(d["train"])


def test_readme_methods_table_comes_from_the_registry():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = methods_markdown()
    assert table in readme, "regenerate the README's methods table with `pydebias methods`"
    assert table.count("\n") == len(REGISTRY) + 1


def test_cli_takes_the_registry_names(tmp_path, capsys):
    from pydebias.tools.cli import main

    assert main(["methods"]) == 0
    assert capsys.readouterr().out.strip() == methods_markdown()
    assert main(["run", "neurontune-dagger", "--data", "planted", "--out", str(tmp_path), "--quiet"]) == 2
    assert "neurontune-val" in capsys.readouterr().err


# -- models ------------------------------------------------------------------------------
@pytest.mark.parametrize("make, x", [
    (lambda: SmallCNN(n_classes=3, in_channels=1), torch.randn(5, 1, 28, 28)),
    (lambda: TabularMLP(in_features=7, n_classes=3), torch.randn(5, 7)),
])
def test_small_models_follow_the_protocol(make, x):
    torch.manual_seed(0)
    model = make()
    assert isinstance(model, EncoderHead) and model.embed_dim == 64 and model.n_classes == 3
    seen = {}
    hook = model.layer(model.embedding_layer).register_forward_hook(lambda m, i, o: seen.setdefault("e", o))
    with torch.no_grad():
        logits = model(x)
    hook.remove()
    assert torch.equal(seen["e"], model.embed(x))  # the named layer's output is the embedding
    assert torch.allclose(logits, model.head(model.embed(x)))
    with pytest.raises(ValueError, match="layer: .* has no layer 'nope'"):
        model.layer("nope")


def test_protocol_keeps_the_state_dict_of_the_cached_backbones():
    # the cache holds state dicts of these exact module names: renaming any retrains every backbone
    assert list(SmallCNN(n_classes=2).state_dict()) == [
        "conv.0.weight", "conv.0.bias", "conv.3.weight", "conv.3.bias", "fc.0.weight", "fc.0.bias",
        "head.weight", "head.bias"]
    assert list(TabularMLP(4).state_dict()) == [
        "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "head.weight", "head.bias"]


def test_model_method_checks_its_inputs():
    ds = torch.utils.data.TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    assert ModelMethod._check_dataset(ds) is ds
    with pytest.raises(TypeError, match="train: expected a torch.utils.data.Dataset"):
        ModelMethod._check_dataset([(1, 2)])
    with pytest.raises(ValueError, match="train: the dataset is empty"):
        ModelMethod._check_dataset(torch.utils.data.TensorDataset(torch.empty(0, 3), torch.empty(0)))
    with pytest.raises(ValueError, match=r"train: items must be \(x, y\) pairs"):
        ModelMethod._check_dataset(torch.utils.data.TensorDataset(torch.randn(4, 3)))
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        ModelMethod._check_model(np.zeros(3))
