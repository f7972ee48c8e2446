"""The cross-attention network with an AU relation graph (paper 002): ANFL (eqs. 1-3), the heads
(eqs. 4-7), the losses (eqs. 8-11) against hand-worked values, the staged schedule, MixUp, and
P_MTL (eq. 13)."""
import math

import pytest
import torch

from monet.config import TrainConfig
from monet.metrics import compute_metrics
from monet.models import create_model
from monet.models.base import ModelOutput
from monet.models.mtca import ANFL, mtca
from monet.tasks import Task, TaskSpec

LN2, LN3 = math.log(2), math.log(3)
SPEC = TaskSpec((Task("AU1", group="au"), Task("AU2", group="au"),
                 Task("expr", "multiclass", 3, "expr"),
                 Task("valence", "regression", 1, "va"), Task("arousal", "regression", 1, "va")))


def small(spec=SPEC, shape=(4,), **kw):
    c = TrainConfig(family="mtca", d_model=8, knn=2, **kw)
    torch.manual_seed(0)
    return mtca(c, spec, shape), c


def test_image_forward_shapes_and_every_parameter_gets_a_gradient():
    c = TrainConfig(family="mtca", backbone="tiny_cnn", d_model=16, knn=2)
    m = mtca(c, SPEC, (3, 32, 32)).train()
    x = torch.randn(6, 3, 32, 32)
    y = torch.tensor([[1.0, 0, 2, 0.1, -0.2], [0, 1, 1, -0.3, 0.5]] * 3)
    out = m(x, y)
    assert out.logits.shape == (6, 1, 7)
    loss, parts = m.loss(out, y, torch.ones(6, 5), torch.ones(5), c)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, missing
    p = m.eval().predict(x)
    assert p.shape == (6, 7) and ((p[:, :2] >= 0) & (p[:, :2] <= 1)).all()
    assert (p[:, 5:].abs() < 1).all()                                   # tanh (eq. 4)
    assert {"loss/au", "loss/expr", "loss/va", "nll"} <= set(parts)


def test_anfl_knn_graph_and_cosine_probability():
    torch.manual_seed(1)
    g = ANFL(in_dim=5, n=4, d=6, k=2).eval()
    x = torch.randn(3, 5)
    v = torch.relu(torch.einsum("bi,nid->bnd", x, g.w) + g.b)               # eq. 1
    a = g.adjacency(v)
    assert a.shape == (3, 4, 4) and torch.equal(a.sum(-1), torch.full((3, 4), 2.0))
    sim = v @ v.transpose(1, 2)
    for b in range(3):
        for i in range(4):
            kept = set(a[b, i].nonzero().flatten().tolist())
            assert kept == set(sim[b, i].topk(2).indices.tolist())
    p, h = g(x)
    cos = (torch.relu(h) * torch.relu(g.s)).sum(-1) / (
        torch.relu(h).norm(dim=-1) * torch.relu(g.s).norm(dim=-1))
    assert torch.allclose(p, cos, atol=1e-6) and ((p >= 0) & (p <= 1)).all()   # eq. 3


def test_cross_attention_eqs_6_7():
    m, _ = small()
    m.eval()
    x = torch.randn(5, 4)
    f = m.encoder(x)
    p_au, _ = m.anfl(f)
    raw = m.fer[0](f)
    want = torch.tanh(m.w_q[0](p_au) + m.w_k[0](raw)) * raw
    assert torch.allclose(m.logits(x)[:, 2:5], want, atol=1e-6)
    plain, _ = small(cross_attn=False)
    assert not hasattr(plain, "w_q")
    f = plain.encoder(x)
    assert torch.allclose(plain.eval().logits(x)[:, 2:5], plain.fer[0](f), atol=1e-6)


def hand_batch():
    z = torch.tensor([[0.0, 0.0, 0, 0, 0, 0.5, 0.2],
                      [0.0, 0.0, 0, 0, 0, -0.5, 0.0]])
    y = torch.tensor([[1.0, 0, 1, 0.5, 0.0], [1.0, 0, 1, -0.5, 0.4]])
    return ModelOutput(z[:, None], torch.zeros(2, 1)), y, torch.ones(2, 5)


def set_counts(m):
    m.au_pos.copy_(torch.tensor([1.0, 3.0]))      # rates 1/4, 3/4 -> eq. 9 weights 1.5, 0.5
    m.au_n.copy_(torch.tensor([4.0, 4.0]))
    m.ex_counts.copy_(torch.tensor([[3.0, 1.0, 0.0]]))   # P = 3/7, 9/7, 9/7 (mean 1)


def test_losses_eqs_8_to_11_by_hand():
    m, c = small()
    m.eval()
    set_counts(m)
    assert torch.allclose(m.au_weights(), torch.tensor([1.5, 0.5]))
    assert torch.allclose(m.class_weights(0, 3), torch.tensor([3 / 7, 9 / 7, 9 / 7]))
    out, y, mask = hand_batch()
    loss, parts = m.loss(out, y, mask, torch.ones(5), c)
    # eq. 8 at p = 1/2: AU1 positive -> -log(1/2) * 1.5; AU2 negative -> -(1/2) log(1/2) * 0.5
    au = (1.5 * LN2 + 0.5 * 0.5 * LN2) / 2
    ex = 9 / 7 * LN3                                   # eq. 10: P_1 * CE([0, 0, 0], 1)
    # eq. 11: valence predicted exactly (CCC 1); arousal pred (0.2, 0), truth (0, 0.4):
    # cov -0.02, variances 0.01 and 0.04, mean gap 0.1 -> CCC = -0.04 / 0.06
    va = 0 + (1 + 2 / 3)
    assert float(parts["loss/au"]) == pytest.approx(au, rel=1e-5)
    assert float(parts["loss/expr"]) == pytest.approx(ex, rel=1e-5)
    assert float(parts["loss/va"]) == pytest.approx(va, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(au + ex + va, rel=1e-4)


def test_group_weights_and_uncertainty_weighting():
    m, c = small(group_weights={"au": 2.0, "va": 0.0})
    m.eval()
    set_counts(m)
    out, y, mask = hand_batch()
    loss, p = m.loss(out, y, mask, torch.ones(5), c)
    want = 2 * float(p["loss/au"]) + float(p["loss/expr"])
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    u, cu = small(weighting="uncertainty", temperatures={"au": 2.0, "expr": 4.0, "va": 0.5})
    u.eval()
    set_counts(u)
    loss, p = u.loss(out, y, mask, torch.ones(5), cu)
    want = (0.5 * float(p["loss/au"]) / 2 + float(p["loss/expr"]) / 4
            + 0.5 * float(p["loss/va"]) / 0.5 + 0.5 * math.log(2 * 4 * 0.5))
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)


def test_counts_follow_the_training_labels_and_skip_missing_ones():
    m, c = small()
    m.train()
    x = torch.randn(4, 4)
    y = torch.tensor([[1.0, 0, 2, 0, 0], [1, 1, 0, 0, 0], [0, 0, 2, 0, 0], [1, 0, 0, 0, 0]])
    mask = torch.ones(4, 5)
    mask[3, 1] = 0
    mask[2, 2] = 0
    m.loss(m(x, y), y, mask, torch.ones(5), c)
    assert m.au_pos.tolist() == [3.0, 1.0] and m.au_n.tolist() == [4.0, 3.0]
    assert m.ex_counts[0].tolist() == [2.0, 0.0, 1.0]
    m.eval()
    m.loss(m(x, y), y, mask, torch.ones(5), c)                # evaluation never counts
    assert m.au_n.tolist() == [4.0, 3.0]


def test_staged_schedule_trains_the_au_part_first():
    m, c = small(au_steps=2)
    m.train()
    x = torch.randn(6, 4)
    y = torch.tensor([[1.0, 0, 2, 0.1, -0.2], [0, 1, 1, -0.3, 0.5]] * 3)
    for step in range(3):
        m.zero_grad()
        loss, parts = m.loss(m(x, y), y, torch.ones(6, 5), torch.ones(5), c)
        loss.backward()
        fer_grad = m.fer[0].weight.grad
        no_fer = fer_grad is None or float(fer_grad.abs().sum()) == 0
        if step < 2:
            assert no_fer and float(loss.detach()) == pytest.approx(float(parts["loss/au"]))
        else:
            assert not no_fer and float(loss.detach()) > float(parts["loss/au"])


def test_binary_only_datasets_and_registry():
    spec = TaskSpec.binary([f"AU{i}" for i in range(5)], group="au")
    m = create_model(TrainConfig(family="mtca", d_model=8, knn=3), spec, (6,))
    assert type(m).__name__ == "MultiTaskCrossAttention"
    out = m.train()(torch.randn(4, 6), torch.ones(4, 5))
    loss, parts = m.loss(out, torch.ones(4, 5), torch.ones(4, 5), torch.ones(5), TrainConfig())
    assert set(parts) == {"loss/au", "nll"} and math.isfinite(float(loss.detach()))


def test_p_mtl_eq_13_sums_the_three_task_measures():
    pred = torch.tensor([[0.9, 0.1, 0.7, 0.2, 0.1, 0.5, 0.1],
                         [0.2, 0.8, 0.1, 0.8, 0.1, -0.5, 0.3],
                         [0.7, 0.6, 0.1, 0.1, 0.8, 0.2, -0.2]])
    y = torch.tensor([[1.0, 0, 0, 0.4, 0.0], [0, 1, 1, -0.6, 0.4], [1, 0, 2, 0.1, -0.1]])
    met = compute_metrics(pred, y, torch.ones(3, 5), SPEC)
    va = (met["ccc/valence"] + met["ccc/arousal"]) / 2
    assert met["p_mtl"] == pytest.approx(met["mean_f1/au"] + met["mean_f1/expr"] + va)
    assert met["mean_f1/expr"] == pytest.approx(1.0)      # every expression right
    assert met["mean_f1/au"] == pytest.approx((1 + 2 / 3) / 2)   # AU1 all right; AU2 1 tp, 1 fp


def test_multitask_mixup_mixes_inputs_and_labels():
    m, c = small(spec=TaskSpec(SPEC.tasks[:3]), mixup=True, mixup_alpha=0.4)
    set_counts(m)
    torch.manual_seed(5)
    x = torch.randn(6, 4)
    y = torch.tensor([[1.0, 0, 2], [0, 1, 1], [1, 1, 0], [0, 0, 2], [1, 0, 1], [0, 1, 0]])
    mask = torch.ones(6, 3)
    out = m.train()(x, y)
    perm, lam = m._mix
    assert torch.allclose(out.logits[:, 0], m.logits(lam * x + (1 - lam) * x[perm]), atol=1e-5)
    m.eval()                                             # no counting from here on
    mixed, _ = m.loss(out, y, mask, torch.ones(3), c)
    la, _ = m.loss(out, y, mask, torch.ones(3), c)
    lb, _ = m.loss(out, y[perm], mask, torch.ones(3), c)
    assert float(mixed.detach()) == pytest.approx(
        lam * float(la.detach()) + (1 - lam) * float(lb.detach()), rel=1e-5)
