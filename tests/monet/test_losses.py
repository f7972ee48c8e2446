"""Losses against values computed by hand from the papers' formulas.

MONET §4.2 (bias init, per-AU weights, Dice), eq. 18 (mixture NLL); paper 002 eqs. 8-12
(weighted asymmetric loss, its weights, weighted CE, CCC loss); paper 003 eqs. 3-5
(temperature factors).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from monet.losses import (ccc, ccc_loss, class_frequency_weights, dice_loss,
                          inverse_frequency_weights, mixture_nll, prior_log_odds, task_nll,
                          temperature_weights, wasl)
from monet.tasks import Task, TaskSpec

NAN = float("nan")


def sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def mixed_spec():
    return TaskSpec((Task("AU1", "binary", 1, "au"), Task("AU2", "binary", 1, "au"),
                     Task("expr", "multiclass", 3, "expr"),
                     Task("valence", "regression", 1, "va"), Task("arousal", "regression", 1, "va")))


# ------------------------------------------------------------------ bias init and task weights
def test_prior_log_odds_from_label_frequencies():
    y = torch.tensor([[1., 1.], [0., 1.], [0., 1.], [0., 0.]])        # rates 1/4 and 3/4
    lo = prior_log_odds(y)
    assert lo.tolist() == pytest.approx([math.log(1 / 3), math.log(3)], abs=1e-6)
    # a masked row does not count, whatever it holds
    y2 = torch.cat([y, torch.tensor([[NAN, 1.]])])
    m2 = torch.cat([torch.ones(4, 2), torch.tensor([[0., 0.]])])
    assert prior_log_odds(y2, m2).tolist() == pytest.approx(lo.tolist(), abs=1e-6)
    # sigmoid of the bias gives back the frequency
    assert torch.sigmoid(lo).tolist() == pytest.approx([0.25, 0.75], abs=1e-6)


def test_prior_log_odds_clamps_extremes_and_empty_tasks():
    y = torch.tensor([[0., 1., 0.], [0., 1., 0.]])
    m = torch.tensor([[1., 1., 0.], [1., 1., 0.]])
    lo = prior_log_odds(y, m, eps=1e-3)
    assert lo[0] == pytest.approx(math.log(1e-3 / (1 - 1e-3)), rel=1e-4)
    assert lo[1] == pytest.approx(math.log((1 - 1e-3) / 1e-3), rel=1e-4)
    assert lo[2] == 0.0                                            # no label: p = 1/2


def test_inverse_frequency_weights_mean_one():
    y = torch.tensor([[1., 1., 1.], [1., 0., 1.], [0., 0., 1.], [0., 0., 1.]])  # 1/2, 1/4, 1
    w = inverse_frequency_weights(y)
    # 1/r = 2, 4, 1 -> mean 7/3 -> 6/7, 12/7, 3/7 (paper 002 eq. 9: N (1/r_i) / sum_j 1/r_j)
    assert w.tolist() == pytest.approx([6 / 7, 12 / 7, 3 / 7], abs=1e-6)
    assert float(w.mean()) == pytest.approx(1.0)
    eq9 = [3 * (1 / r) / (2 + 4 + 1) for r in (0.5, 0.25, 1.0)]
    assert w.tolist() == pytest.approx(eq9, abs=1e-6)


def test_inverse_frequency_weights_respect_mask_and_empty_tasks():
    y = torch.tensor([[1., 1.], [0., NAN], [1., 0.], [0., 0.]])
    m = torch.tensor([[1., 1.], [1., 0.], [1., 1.], [1., 1.]])
    # rates: 2/4 and 1/3 -> 1/r = 2, 3 -> 0.8, 1.2
    assert inverse_frequency_weights(y, m).tolist() == pytest.approx([0.8, 1.2], abs=1e-6)
    # a task without any positive must not crush the others to ~0
    y0 = torch.tensor([[1., 0.], [0., 0.], [1., 0.], [0., 0.]])
    w0 = inverse_frequency_weights(y0)
    # rate of task 2 counts as 1/(4+1): 1/r = 2, 5 -> 4/7, 10/7
    assert w0.tolist() == pytest.approx([4 / 7, 10 / 7], abs=1e-6)


def test_temperature_weights_paper_003():
    w = temperature_weights(mixed_spec(), {"au": 1.0, "expr": 5.0})
    # eq. 4: 1/(2 T_a), eq. 5: 1/T_e, eq. 3 with sigma_v^2 = 1: the 1/2 is in the Gaussian NLL
    assert w.tolist() == pytest.approx([0.5, 0.5, 0.2, 1.0, 1.0])
    assert temperature_weights(mixed_spec(), {}).tolist() == [1.0] * 5


# ------------------------------------------------------------------ Dice
def test_dice_loss_by_hand():
    probs = torch.tensor([[0.8, 0.1], [0.2, 0.3], [0.6, 0.9]])
    y = torch.tensor([[1., 0.], [0., 0.], [1., 1.]])
    m = torch.ones(3, 2)
    # task 1: num = 2 (0.8 + 0.6) + 1 = 3.8; den = 0.64 + 0.04 + 0.36 + 2 + 1 = 4.04
    d1 = 1 - 3.8 / 4.04
    # task 2: num = 2 * 0.9 + 1 = 2.8; den = 0.01 + 0.09 + 0.81 + 1 + 1 = 2.91
    d2 = 1 - 2.8 / 2.91
    assert float(dice_loss(probs, y, m)) == pytest.approx((d1 + d2) / 2, abs=1e-6)
    w = torch.tensor([0.5, 1.5])
    assert float(dice_loss(probs, y, m, w)) == pytest.approx((0.5 * d1 + 1.5 * d2) / 2, abs=1e-6)
    # masking row 2 of task 1 removes its 0.2^2 from the denominator
    m2 = torch.tensor([[1., 1.], [0., 1.], [1., 1.]])
    y2 = torch.tensor([[1., 0.], [NAN, 0.], [1., 1.]])
    d1m = 1 - 3.8 / 4.0
    assert float(dice_loss(probs, y2, m2)) == pytest.approx((d1m + d2) / 2, abs=1e-6)


def test_dice_perfect_prediction_is_zero():
    y = torch.tensor([[1.], [0.], [1.]])
    assert float(dice_loss(y.clone(), y, torch.ones_like(y))) == pytest.approx(0.0, abs=1e-7)


# ------------------------------------------------------------------ weighted asymmetric loss
def test_wasl_matches_paper_002_eq8():
    z = torch.tensor([-2.0, -0.3, 0.0, 1.5, 3.0])
    y = torch.tensor([1., 0., 0., 1., 0.])
    got = wasl(z, y)
    want = []
    for zi, yi in zip(z.tolist(), y.tolist()):
        p = sig(zi)
        want.append(-(yi * math.log(p) + (1 - yi) * p * math.log(1 - p)))
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_wasl_gradient_reference_behaviour():
    """The focusing factor p of the negative term gets no gradient (reference code), so
    d/dz [-p log(1 - p)] = p * p for a negative; a positive has the plain BCE gradient p - 1."""
    z = torch.tensor([0.7, -0.4], requires_grad=True)
    wasl(z, torch.tensor([0., 1.])).sum().backward()
    p0, p1 = sig(0.7), sig(-0.4)
    assert z.grad.tolist() == pytest.approx([p0 * p0, p1 - 1], rel=1e-5)


def test_wasl_easy_negatives_count_less_than_bce():
    z = torch.tensor([-4.0, -1.0])
    y = torch.zeros(2)
    bce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    w = wasl(z, y)
    assert torch.all(w < bce)
    assert float(w[0] / bce[0]) == pytest.approx(sig(-4.0), rel=1e-5)   # ratio = p


def test_wasl_general_asl_form():
    z, y = torch.tensor([0.5, 0.5]), torch.tensor([1., 0.])
    p = sig(0.5)
    pm = p - 0.05
    got = wasl(z, y, gamma_neg=4.0, gamma_pos=1.0, margin=0.05)
    want = [-(1 - p) * math.log(p), -(pm ** 4) * math.log(1 - pm)]
    assert got.tolist() == pytest.approx(want, rel=1e-5)


def test_task_nll_wasl_with_au_weights():
    spec = TaskSpec.binary(["AU1", "AU2"], group="au")
    z = torch.tensor([[[1.0, -1.0]], [[-0.5, 2.0]]])                     # [B=2, K=1, T=2]
    y = torch.tensor([[1., 0.], [0., 1.]])
    w = torch.tensor([1.5, 0.5])
    got = task_nll(z, y, torch.ones(2, 2), spec, w, kind_binary="wasl")
    p = [[sig(1.0), sig(-1.0)], [sig(-0.5), sig(2.0)]]
    # eq. 8 summed over AUs (the NLL convention of eq. 18), weights from eq. 9
    r0 = 1.5 * -math.log(p[0][0]) + 0.5 * -(p[0][1] * math.log(1 - p[0][1]))
    r1 = 1.5 * -(p[1][0] * math.log(1 - p[1][0])) + 0.5 * -math.log(p[1][1])
    assert got.shape == (2, 1)
    assert got[:, 0].tolist() == pytest.approx([r0, r1], rel=1e-5)


# ------------------------------------------------------------------ weighted cross-entropy
def test_class_frequency_weights():
    y = torch.tensor([0., 0., 0., 1., 2., 2.])                 # freqs 1/2, 1/6, 1/3
    w = class_frequency_weights(y, 3)
    assert w.tolist() == pytest.approx([6 / 11, 18 / 11, 9 / 11], abs=1e-6)   # 1/f = 2, 6, 3
    m = torch.tensor([1., 1., 0., 1., 1., 1.])                 # freqs 2/5, 1/5, 2/5
    assert class_frequency_weights(y, 3, m).tolist() == pytest.approx([0.75, 1.5, 0.75], abs=1e-6)


def test_weighted_cross_entropy_paper_002_eq10():
    spec = TaskSpec((Task("expr", "multiclass", 3, "expr"),))
    z = torch.tensor([[[2.0, 0.5, -1.0]], [[0.0, 1.0, 0.0]]])
    y = torch.tensor([[0.], [2.]])
    m = torch.ones(2, 1)

    def lsm(row, c):
        return row[c] - math.log(sum(math.exp(v) for v in row))
    ce = [-lsm([2.0, 0.5, -1.0], 0), -lsm([0.0, 1.0, 0.0], 2)]
    plain = task_nll(z, y, m, spec)
    assert plain[:, 0].tolist() == pytest.approx(ce, rel=1e-5)
    P = torch.tensor([0.5, 1.0, 2.0])
    for key in ("expr", 0):                                    # by name or by task index
        got = task_nll(z, y, m, spec, class_weights={key: P})
        assert got[:, 0].tolist() == pytest.approx([0.5 * ce[0], 2.0 * ce[1]], rel=1e-5)


# ------------------------------------------------------------------ CCC
def test_ccc_and_ccc_loss_by_hand():
    pred, tgt = torch.tensor([1., 2., 3.]), torch.tensor([2., 4., 6.])
    # means 2, 4; var 2/3, 8/3; cov 4/3 -> 2 cov / (2/3 + 8/3 + 4) = 4/11
    assert float(ccc(pred, tgt)) == pytest.approx(4 / 11, rel=1e-5)
    assert float(ccc_loss(pred, tgt)) == pytest.approx(7 / 11, rel=1e-5)
    assert float(ccc_loss(tgt, tgt)) == pytest.approx(0.0, abs=1e-6)
    # masked entries (here NaN) are left out
    p2, t2 = torch.tensor([1., 2., 5., 3.]), torch.tensor([2., 4., NAN, 6.])
    m2 = torch.tensor([1., 1., 0., 1.])
    assert float(ccc_loss(p2, t2, m2)) == pytest.approx(7 / 11, rel=1e-5)
    # paper 002 eq. 11: L_VA = (1 - CCC_V) + (1 - CCC_A)
    assert float(ccc_loss(pred, tgt) + ccc_loss(tgt, tgt)) == pytest.approx(7 / 11, rel=1e-5)


def test_ccc_loss_gradient_and_degenerate():
    pred = torch.tensor([0.1, 0.4, 0.2], requires_grad=True)
    ccc_loss(pred, torch.tensor([0., 1., 0.5])).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert float(ccc_loss(torch.tensor([1.]), torch.tensor([2.]))) == 0.0   # < 2 labels


# ------------------------------------------------------------------ masks, mixed tasks
def test_masked_labels_contribute_nothing():
    spec = mixed_spec()
    torch.manual_seed(0)
    z = torch.randn(2, 3, 7, requires_grad=True)                      # D = 2 + 3 + 2
    y = torch.tensor([[1., 0., 2., 0.3, -0.2], [0., 1., 1., -0.5, 0.4]])
    m = torch.ones(2, 5)
    ref = task_nll(z, y, m, spec)
    # mask example 0's AU2, expr and arousal, with garbage placeholders
    ym, mm = y.clone(), m.clone()
    ym[0, 1], ym[0, 2], ym[0, 4] = NAN, -1., NAN
    mm[0, 1] = mm[0, 2] = mm[0, 4] = 0.
    for kind in ("bce", "wasl"):
        got = task_nll(z, ym, mm, spec, kind_binary=kind)
        assert torch.isfinite(got).all()
        ref_k = task_nll(z, y, m, spec, kind_binary=kind)
        # removing those three terms by hand from the reference
        zz = z[0].detach()
        p2 = torch.sigmoid(zz[:, 1])
        au2 = (F.binary_cross_entropy_with_logits(zz[:, 1], torch.zeros(3), reduction="none")
               if kind == "bce" else -(p2 * torch.log(1 - p2)))
        ex = -torch.log_softmax(zz[:, 2:5], -1)[:, 2]
        ar = 0.5 * (zz[:, 6] + 0.2) ** 2
        assert got[0].tolist() == pytest.approx((ref_k[0].detach() - au2 - ex - ar).tolist(),
                                                rel=1e-5, abs=1e-6)
        assert got[1].tolist() == pytest.approx(ref_k[1].detach().tolist(), rel=1e-6)
    got = task_nll(z, ym, mm, spec)
    got.sum().backward()
    g = z.grad[0]
    assert torch.all(g[:, 1] == 0) and torch.all(g[:, 2:5] == 0) and torch.all(g[:, 6] == 0)
    assert torch.all(g[:, 0] != 0) and torch.all(g[:, 5] != 0)
    assert ref.shape == (2, 3)


def test_mixed_task_nll_by_hand():
    spec = mixed_spec()
    z = torch.tensor([[[0.5, -1.0, 1.0, 0.0, -1.0, 0.2, -0.3]]])
    y = torch.tensor([[1., 0., 1., 0.5, 0.1]])
    w = torch.tensor([2.0, 1.0, 0.5, 1.0, 3.0])
    got = float(task_nll(z, y, torch.ones(1, 5), spec, w))
    lse = math.log(math.exp(1.0) + math.exp(0.0) + math.exp(-1.0))
    want = (2.0 * -math.log(sig(0.5)) + 1.0 * -math.log(1 - sig(-1.0))
            + 0.5 * (lse - 0.0) + 1.0 * 0.5 * (0.2 - 0.5) ** 2 + 3.0 * 0.5 * (-0.3 - 0.1) ** 2)
    assert got == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------ mixture NLL (eq. 18)
def test_mixture_nll_against_hand_logsumexp():
    nll = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.1, 4.0]])
    log_pi = torch.log_softmax(torch.tensor([[0.2, -0.1, 0.4], [0.0, 0.0, 0.0]]), dim=1)
    got = mixture_nll(nll, log_pi)
    want = []
    for i in range(2):
        s = sum(math.exp(float(log_pi[i, m]) - float(nll[i, m])) for m in range(3))
        want.append(-math.log(s))
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    # K = 1 (VMN / MRNN / oracle): the plain NLL
    assert mixture_nll(nll[:, :1], torch.zeros(2, 1)).tolist() == pytest.approx([1.0, 3.0])
    # never above the best order's own NLL minus its log weight
    assert torch.all(got <= (nll - log_pi).min(1).values + 1e-6)


def test_task_nll_k_orders_binary_bce():
    spec = TaskSpec.binary("ab")
    z = torch.tensor([[[0.0, 0.0], [2.0, -2.0]]])                       # K = 2 orders
    got = task_nll(z, torch.tensor([[1., 0.]]), torch.ones(1, 2), spec)
    assert got.tolist()[0] == pytest.approx([2 * math.log(2), 2 * -math.log(sig(2.0))], rel=1e-6)
