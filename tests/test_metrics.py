"""evaluate / GroupReport against hand-computed figures."""
import json

import numpy as np
import pytest
import torch

from pydebias import EmbeddingSet, evaluate


def small_set():
    # 3 groups used of 4 declared: group 3 is empty
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    groups = np.array([0, 0, 1, 2, 2, 2, 2, 1])
    feats = np.zeros((8, 2), dtype=np.float32)
    return EmbeddingSet(feats, labels, groups=groups, n_groups=4)


def test_hand_computed_report_with_empty_group():
    s = small_set()
    preds = np.array([0, 1, 0, 1, 1, 0, 1, 1])
    # group 0: rows 0,1 -> 1/2; group 1: rows 2,7 -> 1/2 (row 7 wrong); group 2: rows 3-6 -> 3/4
    r = evaluate(preds, s, train_proportions=[0.4, 0.1, 0.5, 0.0])
    assert r.n == 8 and r.accuracy == pytest.approx(5 / 8)
    assert [g["count"] for g in r.per_group] == [2, 2, 4, 0]
    assert [g["accuracy"] for g in r.per_group] == [0.5, 0.5, 0.75, None]
    assert r.worst_group_accuracy == 0.5  # the empty group does not count as 0
    assert r.weighted_accuracy == pytest.approx((0.4 * 0.5 + 0.1 * 0.5 + 0.5 * 0.75) / 1.0)
    # class 0: rows 0,1,2,7 -> 2/4 correct; class 1: rows 3-6 -> 3/4
    assert r.worst_class_accuracy == 0.5 and r.balanced_accuracy == pytest.approx(0.625)
    assert r.prediction_share == [3 / 8, 5 / 8]
    assert "absent" in r.table()
    d = json.loads(r.to_json())
    assert d["per_group"][3]["accuracy"] is None


def test_evaluate_runs_a_head_on_features():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    s = EmbeddingSet(x, np.array([0, 1, 1]), groups=np.array([0, 1, 1]))
    head = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    r = evaluate(head, s)
    assert [g["accuracy"] for g in r.per_group] == [1.0, 0.5]


def test_bootstrap_interval_brackets_the_point_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 2, n)
    groups = 2 * labels + rng.integers(0, 2, n)
    preds = np.where(rng.random(n) < 0.8, labels, 1 - labels)
    s = EmbeddingSet(np.zeros((n, 1), np.float32), labels, groups=groups)
    a = evaluate(preds, s, n_boot=200, seed=1)
    b = evaluate(preds, s, n_boot=200, seed=1)
    assert a.worst_group_ci == b.worst_group_ci
    lo, hi = a.worst_group_ci
    assert lo < hi and lo <= a.worst_group_accuracy + 0.05 and hi >= a.worst_group_accuracy - 0.05


def test_prediction_shape_error():
    with pytest.raises(ValueError, match="head_or_model"):
        evaluate(np.zeros(3, dtype=int), small_set())
