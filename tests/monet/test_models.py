"""Model families: construction errors, vectorised MONET against the per-order loop, inference."""
import math

import pytest
import torch

from monet.config import TrainConfig
from monet.errors import ConfigError
from monet.losses import mixture_nll, task_nll
from monet.models import create_model, list_families
from monet.models.encoders import MLPEncoder
from monet.models.monet import MultiOrderNet, order_matrix, random_orders
from monet.models.monet_reference import reference_forward, reference_predict
from monet.tasks import Task, TaskSpec


def spec_of(T):
    return TaskSpec.binary([f"t{i}" for i in range(T)])


def _loss(out, y, spec):
    return mixture_nll(task_nll(out.logits, y, torch.ones_like(y), spec), out.log_w).mean()


def test_families_registered():
    assert list_families() == ["monet", "mrnn", "mtca", "mtt", "oracle", "vmnc", "vmns"]


def test_random_orders_distinct_seeded_permutations():
    a = random_orders(5, 120, seed=3)
    assert a.shape == (120, 5)
    assert len({tuple(r) for r in a.tolist()}) == 120            # all 5! orders, distinct
    assert all(sorted(r) == list(range(5)) for r in a.tolist())
    assert torch.equal(a, random_orders(5, 120, seed=3))
    b = random_orders(6, 50, seed=3)
    c = random_orders(6, 50, seed=4)
    assert len({tuple(r) for r in b.tolist()}) == 50
    assert not torch.equal(b, c)
    big = random_orders(12, 64, seed=0)                           # rejection-sampling path
    assert len({tuple(r) for r in big.tolist()}) == 64


@pytest.mark.parametrize("T,M,k,feedback_embed,feedback", [
    (3, 6, 4, 0, "prev"), (5, 120, 100, 0, "prev"), (4, 10, 10, 8, "prev"), (6, 40, 7, 0, "prev"),
    (5, 60, 30, 0, "all"), (4, 12, 5, 8, "all"),
    # few orders: a step uses some of the task cells only (blocks for those alone)
    (5, 2, 1, 0, "prev"), (5, 2, 2, 0, "prev"), (5, 3, 2, 8, "all")])
def test_vectorised_matches_reference_loop(T, M, k, feedback_embed, feedback):
    torch.manual_seed(0)
    spec = spec_of(T)
    net = MultiOrderNet(MLPEncoder(2, 2, 16), 16, spec, hidden=16, M=M, k=k,
                        feedback_embed=feedback_embed, feedback=feedback, seed=1).train()
    with torch.no_grad():                                         # non-uniform order logits
        net.order_logits.normal_()
    B = 9
    x, y = torch.randn(B, 2), (torch.rand(B, T) > 0.5).float()
    kept = net.sample_kept(B, torch.Generator().manual_seed(2))
    out_v = net(x, y, kept=kept)
    out_r = reference_forward(net, x, y, kept)
    assert torch.allclose(out_v.logits, out_r.logits, atol=1e-5)
    assert torch.allclose(out_v.log_w, out_r.log_w)
    lv, lr = _loss(out_v, y, spec), _loss(out_r, y, spec)
    assert torch.allclose(lv, lr, atol=1e-5)
    gv = torch.autograd.grad(lv, list(net.parameters()), allow_unused=True)
    gr = torch.autograd.grad(lr, list(net.parameters()), allow_unused=True)
    for (name, _), a, b in zip(net.named_parameters(), gv, gr):
        a = torch.zeros(1) if a is None else a
        b = torch.zeros(1) if b is None else b
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("tasks", [[1, 3], [4], [0, 1, 2, 3, 4]])
def test_inference_step_uses_each_rows_own_cell(tasks):
    """``_step`` (Algorithm 2's step, rows of mixed tasks in padded blocks, a block only for
    the tasks present) against each row's cell applied on its own."""
    torch.manual_seed(0)
    net = MultiOrderNet(MLPEncoder(2, 2, 16), 16, spec_of(5), hidden=16, M=6, k=3).eval()
    R = 11
    task = torch.tensor(tasks)[torch.randint(len(tasks), (R,))]
    fb, h = torch.randn(R, net.w_ih.shape[1]), torch.randn(R, 16)
    with torch.no_grad():
        hn, o = net._step(fb, h, task)
        for r in range(R):
            t = int(task[r])
            want = net._gru(fb[r] @ net.w_ih[t] + net.b_ih[t], h[r] @ net.w_hh[t] + net.b_hh[t],
                            h[r])
            assert torch.allclose(hn[r], want, atol=1e-6)
            assert torch.allclose(o[r], want @ net.head_w[t] + net.head_b[t], atol=1e-6)


def test_mrnn_shared_cell_matches_reference():
    spec = spec_of(4)
    net = MultiOrderNet(MLPEncoder(2, 2, 16), 16, spec, hidden=16, orders=random_orders(4, 1, 5),
                        shared_cell=True)
    x, y = torch.randn(6, 2), (torch.rand(6, 4) > 0.5).float()
    kept = torch.zeros(6, 1, dtype=torch.long)
    assert torch.allclose(net(x, y, kept=kept).logits, reference_forward(net, x, y, kept).logits,
                          atol=1e-5)
    assert net.w_hh.shape[0] == 1 and net.order_logits is None


def test_order_dropout_keeps_exactly_k_distinct_orders():
    net = MultiOrderNet(MLPEncoder(2), 64, spec_of(5), M=120, k=100)
    kept = net.sample_kept(50, torch.Generator().manual_seed(0))
    assert kept.shape == (50, 100)
    assert all(len(set(r)) == 100 for r in kept.tolist())
    assert int(kept.min()) >= 0 and int(kept.max()) < 120
    # different examples get different subsets
    assert len({tuple(sorted(r)) for r in kept.tolist()}) == 50
    out = net.train()(torch.randn(50, 2), torch.ones(50, 5), generator=torch.Generator().manual_seed(1))
    assert out.logits.shape == (50, 100, 5)
    # pi~ renormalises over the kept orders only (eq. 25)
    assert torch.allclose(out.log_w.exp().sum(1), torch.ones(50))


def test_soft_order_and_distance():
    spec = spec_of(3)
    orders = torch.tensor([[0, 1, 2], [2, 1, 0]])
    net = MultiOrderNet(MLPEncoder(2), 64, spec, orders=orders)
    assert torch.equal(order_matrix([2, 0, 1]), torch.tensor([[0., 0, 1], [1, 0, 0], [0, 1, 0]]))
    with torch.no_grad():
        net.order_logits.copy_(torch.tensor([0.0, 0.0]))
    om = net.soft_order()
    assert torch.allclose(om, 0.5 * torch.eye(3) + 0.5 * torch.eye(3).flip(1))
    assert torch.allclose(om.sum(0), torch.ones(3)) and torch.allclose(om.sum(1), torch.ones(3))
    # Omega - I: -0.5 at (0,0), (2,2); +0.5 at (0,2), (2,0); 0 at the shared centre -> 4 * 0.25
    assert net.dist_to_identity() == pytest.approx(1.0)
    with torch.no_grad():
        net.order_logits.copy_(torch.tensor([20.0, 0.0]))
    assert net.dist_to_identity() == pytest.approx(0.0, abs=1e-6)
    assert net.most_likely_order() == [0, 1, 2]


def test_one_hot_pi_every_trajectory_uses_that_order():
    net = MultiOrderNet(MLPEncoder(2), 64, spec_of(4), M=24, k=5, seed=0).eval()
    with torch.no_grad():
        net.order_logits.fill_(-1e4)
        net.order_logits[7] = 1e4
    p, s = net.predict(torch.randn(10, 2), L=20, generator=torch.Generator().manual_seed(0),
                       return_orders=True)
    assert s.shape == (10, 20) and bool((s == 7).all())
    assert p.shape == (10, 4) and bool(((p >= 0) & (p <= 1)).all())
    # with a uniform pi many orders are used
    with torch.no_grad():
        net.order_logits.zero_()
    _, s = net.predict(torch.randn(10, 2), L=20, return_orders=True,
                       generator=torch.Generator().manual_seed(0))
    assert len(set(s.flatten().tolist())) > 10


@pytest.mark.parametrize("kw,L,peaked", [
    (dict(M=120, k=10), 40, False),          # uniform pi: trajectories spread over many orders
    (dict(M=120, k=10), 40, True),           # one dominant order: most trajectories share a path
    (dict(M=2, k=2), 7, False),
    (dict(M=1), 1, False),
    (dict(M=24, k=5, feedback="all"), 20, True),
    (dict(M=24, k=5, feedback_embed=8), 20, False),
    (dict(M=6, shared_cell=True), 20, False),  # MRNN's one cell
])
def test_inference_runs_each_distinct_state_once_with_the_same_draws_and_outputs(kw, L, peaked):
    """predict() runs each distinct (trajectory state, next task) once; it must give what
    Algorithm 2 on all B * L rows gives with the same generator (the reference loop), and fewer
    distinct rows must not change any draw."""
    torch.manual_seed(0)
    net = MultiOrderNet(MLPEncoder(2), 64, spec_of(5), hidden=32, seed=1, **kw).eval()
    with torch.no_grad():
        net.head_b.mul_(8.0)                 # confident predictions: paths merge, as after training
        if peaked and net.order_logits is not None:
            net.order_logits[3] = 6.0
    x = torch.randn(30, 2)
    got = net.predict(x, L=L, generator=torch.Generator().manual_seed(4))
    ref = reference_predict(net, x, L, generator=torch.Generator().manual_seed(4))
    assert got.shape == (30, 5)
    assert torch.allclose(got, ref, atol=1e-6), float((got - ref).abs().max())
    # a different generator gives different draws (the comparison above is not vacuous)
    other = net.predict(x, L=L, generator=torch.Generator().manual_seed(5))
    if L > 1 or net.M > 1:
        assert not torch.allclose(other, ref, atol=1e-6)


def test_inference_equals_chain_rule_for_deterministic_feedback():
    """With L trajectories and one order, predict() for the first task of the order is exactly
    sigmoid of its logit (no sampled feedback before it)."""
    spec = spec_of(3)
    net = MultiOrderNet(MLPEncoder(2), 64, spec, orders=torch.tensor([[2, 0, 1]])).eval()
    x = torch.randn(5, 2)
    p = net.predict(x, L=7, generator=torch.Generator().manual_seed(0))
    out = net(x, torch.zeros(5, 3))
    assert torch.allclose(p[:, 2], torch.sigmoid(out.logits[:, 0, 2]), atol=1e-6)


@pytest.mark.parametrize("kw,msg", [
    (dict(M=121, k=100), "only T! = 120"),
    (dict(M=10, k=11), "k = 11 > M = 10"),
    (dict(M=10, k=0), "expected k >= 1"),
    (dict(family="nope"), "unknown model family 'nope'"),
    (dict(family="oracle", order=[0, 1, 2]), "permutation of 0..4"),
])
def test_bad_arguments_give_clear_errors(kw, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace("*", r"\*")):
        create_model(TrainConfig(**kw), spec_of(5), (2,))


def test_sequential_families_chain_the_binary_tasks_and_need_one():
    spec = TaskSpec((Task("au1"), Task("expr", "multiclass", 8, "expr")))
    m = create_model(TrainConfig(family="monet", M=1, k=1), spec, (2,))
    assert m(torch.randn(4, 2), torch.zeros(4, 2)).logits.shape == (4, 1, 9)
    with pytest.raises(ConfigError, match="chain binary tasks"):
        create_model(TrainConfig(family="monet", M=1, k=1),
                     TaskSpec((Task("expr", "multiclass", 8, "expr"),)), (2,))
    m = create_model(TrainConfig(family="vmns"), spec, (2,))
    assert m(torch.randn(4, 2)).logits.shape == (4, 1, 9)


@pytest.mark.parametrize("family", ["vmnc", "vmns", "mrnn", "monet", "oracle"])
def test_every_family_trains_one_step(family):
    spec = spec_of(3)
    m = create_model(TrainConfig(family=family, M=6, k=3), spec, (2,)).train()
    x, y = torch.randn(8, 2), (torch.rand(8, 3) > 0.5).float()
    out = m(x, y)
    loss = _loss(out, y, spec)
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    grads = [p.grad for p in m.parameters() if p.requires_grad and p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    p = m.eval().predict(x)
    assert p.shape == (8, 3)
