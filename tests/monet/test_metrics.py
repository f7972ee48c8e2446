"""Metrics on small hand examples: F1, accuracy, CCC and the Aff-Wild2 P_MTL (paper 002 eq. 13)."""
import numpy as np
import pytest
import torch

from monet.metrics import ccc_np, compute_metrics, f1_binary, f1_macro
from monet.tasks import Task, TaskSpec


def test_f1_binary_by_hand():
    pred = np.array([1, 1, 0, 0, 1])
    y = np.array([1, 0, 1, 0, 1])
    # tp = 2, fp = 1, fn = 1 -> 2 * 2 / (4 + 1 + 1)
    assert f1_binary(pred, y) == pytest.approx(2 / 3)
    assert f1_binary(np.zeros(4, int), np.zeros(4, int)) == 0.0     # nothing to find
    assert f1_binary(np.ones(3, int), np.ones(3, int)) == 1.0


def test_f1_macro_by_hand():
    pred = np.array([0, 1, 1, 2, 0, 2])
    y = np.array([0, 1, 2, 2, 1, 2])
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 1 fp 1 fn 1 -> 1/2; class 2: tp 2 fp 0 fn 1 -> 4/5
    assert f1_macro(pred, y, 3) == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    # a class never predicted nor present counts as 0 (average over all n classes)
    assert f1_macro(pred, y, 4) == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 4)


def test_ccc_np_by_hand():
    assert ccc_np(np.array([1., 2., 3.]), np.array([2., 4., 6.])) == pytest.approx(4 / 11)
    assert ccc_np(np.array([1., 2.]), np.array([1., 2.])) == pytest.approx(1.0)
    assert ccc_np(np.array([1.]), np.array([1.])) == 0.0


def test_binary_metrics_per_task_and_mean():
    spec = TaskSpec.binary(["AU1", "AU2"], group="au")
    pred = torch.tensor([[0.9, 0.1], [0.6, 0.7], [0.2, 0.4], [0.3, 0.8]])
    y = torch.tensor([[1., 0.], [0., 1.], [0., 1.], [1., 1.]])
    m = compute_metrics(pred, y, torch.ones(4, 2), spec)
    # AU1: hard 1,1,0,0 vs 1,0,0,1 -> acc 2/4, tp 1 fp 1 fn 1 -> F1 1/2
    # AU2: hard 0,1,0,1 vs 0,1,1,1 -> acc 3/4, tp 2 fp 0 fn 1 -> F1 4/5
    assert m["acc/AU1"] == pytest.approx(0.5) and m["f1/AU1"] == pytest.approx(0.5)
    assert m["acc/AU2"] == pytest.approx(0.75) and m["f1/AU2"] == pytest.approx(0.8)
    assert m["mean_acc"] == pytest.approx(0.625)
    assert m["mean_f1"] == pytest.approx(0.65)
    assert "p_mtl" not in m and "mean_ccc" not in m


def test_masked_labels_are_left_out_of_metrics():
    spec = TaskSpec.binary(["a"])
    pred = torch.tensor([[0.9], [0.9], [0.1]])
    y = torch.tensor([[1.], [0.], [0.]])
    mask = torch.tensor([[1.], [0.], [1.]])                     # the false positive is masked
    m = compute_metrics(pred, y, mask, spec)
    assert m["acc/a"] == 1.0 and m["f1/a"] == 1.0


def test_threshold():
    spec = TaskSpec.binary(["a"])
    pred, y = torch.tensor([[0.3], [0.6]]), torch.tensor([[1.], [1.]])
    assert compute_metrics(pred, y, torch.ones(2, 1), spec)["acc/a"] == 0.5
    assert compute_metrics(pred, y, torch.ones(2, 1), spec, threshold=0.25)["acc/a"] == 1.0


def affwild_spec(extra_regression=False):
    tasks = [Task("AU1", "binary", 1, "au"), Task("AU2", "binary", 1, "au"),
             Task("expr", "multiclass", 3, "expr"),
             Task("valence", "regression", 1, "va"), Task("arousal", "regression", 1, "va")]
    if extra_regression:
        tasks.append(Task("intensity", "regression", 1, "other"))
    return TaskSpec(tuple(tasks))


def affwild_example():
    # columns: AU1, AU2, expr probs (3), valence, arousal
    pred = torch.tensor([
        [0.9, 0.2, 0.7, 0.2, 0.1, 1.0, 2.0],
        [0.8, 0.6, 0.1, 0.8, 0.1, 2.0, 1.0],
        [0.1, 0.7, 0.2, 0.3, 0.5, 3.0, 3.0],
        [0.4, 0.9, 0.6, 0.3, 0.1, 0.0, 0.0],
    ])
    y = torch.tensor([
        [1., 0., 0., 2., 1.],
        [1., 1., 1., 4., 2.],
        [0., 1., 2., 6., 3.],
        [1., 0., 1., 9., 9.],
    ])
    mask = torch.ones(4, 5)
    mask[3, 3] = mask[3, 4] = 0.                                  # example 4 has no VA label
    return pred, y, mask


def test_p_mtl_by_hand():
    pred, y, mask = affwild_example()
    m = compute_metrics(pred, y, mask, affwild_spec())
    # AU1: hard 1,1,0,0 vs 1,1,0,1 -> tp 2 fp 0 fn 1 -> 4/5
    # AU2: hard 0,1,1,1 vs 0,1,1,0 -> tp 2 fp 1 fn 0 -> 4/5
    f1_au = (0.8 + 0.8) / 2
    # expr: argmax 0,1,2,0 vs 0,1,2,1 -> acc 3/4;
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 1 fp 0 fn 1 -> 2/3; class 2: tp 1 -> 1
    f1_ex = (2 / 3 + 2 / 3 + 1) / 3
    # valence: pred 1,2,3 vs 2,4,6 -> 4/11; arousal: pred 2,1,3 vs 1,2,3
    #   deviations (0, -1, 1) and (-1, 0, 1): cov 1/3, var 2/3 each -> (2/3) / (4/3) = 1/2
    ccc_v, ccc_a = 4 / 11, 1 / 2
    assert m["mean_f1/au"] == pytest.approx(f1_au)
    assert m["f1/expr"] == pytest.approx(f1_ex) and m["mean_f1/expr"] == pytest.approx(f1_ex)
    assert m["acc/expr"] == pytest.approx(0.75)
    assert m["ccc/valence"] == pytest.approx(ccc_v) and m["ccc/arousal"] == pytest.approx(ccc_a)
    assert m["mean_ccc"] == pytest.approx((ccc_v + ccc_a) / 2)
    assert m["p_mtl"] == pytest.approx(f1_au + f1_ex + (ccc_v + ccc_a) / 2)


def test_p_mtl_uses_only_valence_arousal_ccc():
    pred, y, mask = affwild_example()
    pred = torch.cat([pred, torch.tensor([[1.], [2.], [3.], [4.]])], 1)
    y = torch.cat([y, torch.tensor([[4.], [3.], [2.], [1.]])], 1)       # CCC -1
    mask = torch.cat([mask, torch.ones(4, 1)], 1)
    m = compute_metrics(pred, y, mask, affwild_spec(extra_regression=True))
    assert m["ccc/intensity"] == pytest.approx(-1.0)
    f1_au, f1_ex, va = 0.8, (2 / 3 + 2 / 3 + 1) / 3, (4 / 11 + 1 / 2) / 2
    assert m["p_mtl"] == pytest.approx(f1_au + f1_ex + va)
