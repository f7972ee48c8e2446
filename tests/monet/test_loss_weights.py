"""Per-group loss weights and uncertainty weighting in the shared loss (vmnc/vmns/mrnn/monet), and
how MONET's expression/VA heads join eq. 18 on Aff-Wild2."""
import math

import pytest
import torch

from monet.config import TrainConfig
from monet.losses import mixture_nll, task_nll, temperature_weights
from monet.models import create_model
from monet.tasks import Task, TaskSpec
from monet.train import compute_loss

SPEC = TaskSpec((Task("AU1", group="au"), Task("AU2", group="au"),
                 Task("expr", "multiclass", 3, "expr"),
                 Task("valence", "regression", 1, "va"), Task("arousal", "regression", 1, "va")))


def data():
    torch.manual_seed(0)
    x = torch.randn(6, 4)
    y = torch.tensor([[1.0, 0, 2, 0.3, -0.1], [0, 1, 0, -0.5, 0.2], [1, 1, 1, 0.1, 0.1]] * 2)
    return x, y, torch.ones(6, 5)


def test_group_weights_scale_the_task_nll():
    c = TrainConfig(family="vmnc", head_width=8, enc_width=8,
                    group_weights={"expr": 0.0, "va": 2.0})
    m = create_model(c, SPEC, (4,)).eval()
    x, y, mask = data()
    out = m(x, y, mask=mask)
    loss, _ = compute_loss(m, out, y, mask, SPEC, torch.ones(5), c)
    want = mixture_nll(task_nll(out.logits, y, mask, SPEC, torch.tensor([1.0, 1, 0, 2, 2])),
                       out.log_w).mean()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-6)


def test_uncertainty_weighting_learned_temperatures_with_the_log_term():
    temps = {"au": 2.0, "expr": 4.0, "va": 0.5}
    c = TrainConfig(family="vmns", head_width=8, enc_width=8, weighting="uncertainty",
                    temperatures=temps)
    m = create_model(c, SPEC, (4,)).eval()
    assert torch.allclose(m.log_tau.exp(), torch.tensor([2.0, 4.0, 0.5]))
    x, y, mask = data()
    out = m(x, y, mask=mask)
    w = temperature_weights(SPEC, temps)                   # what build_loss_weights passes
    loss, parts = compute_loss(m, out, y, mask, SPEC, w, c)
    # BCE / (2 T_au), CE / T_expr, (z - y)^2 / (2 sigma^2) + 1/2 sum log T
    per_task = torch.tensor([1 / 4, 1 / 4, 1 / 4, 1 / 0.5, 1 / 0.5])
    want = mixture_nll(task_nll(out.logits, y, mask, SPEC, per_task), out.log_w).mean()
    reg = 0.5 * math.log(2 * 4 * 0.5)
    assert float(parts["uncertainty"].detach()) == pytest.approx(reg)
    assert float(loss.detach()) == pytest.approx(float(want.detach()) + reg, rel=1e-5)
    loss.backward()
    assert m.log_tau.grad is not None and m.log_tau.grad.abs().sum() > 0
    assert "log_tau" in dict(m.named_parameters())         # trained by the main optimizer


def test_monet_heads_join_eq_18_outside_the_log_sum_exp():
    spec = TaskSpec((Task("AU4", group="au"),) + SPEC.tasks)            # 3 AUs: 3! = 6 orders
    c = TrainConfig(family="monet", M=6, k=4, hidden=16, enc_width=16)
    m = create_model(c, spec, (4,)).train()
    x, y, mask = data()
    y = torch.cat([torch.ones(6, 1), y], 1)
    mask = torch.ones(6, 6)
    out = m(x, y, mask=mask, generator=torch.Generator().manual_seed(0))
    assert out.logits.shape == (6, 4, 8)
    assert torch.allclose(out.logits[:, :1, 3:], out.logits[:, 1:, 3:])   # heads: no order
    loss, _ = compute_loss(m, out, y, mask, spec, torch.ones(6), c)
    chain, heads = TaskSpec(spec.tasks[:3]), TaskSpec(spec.tasks[3:])
    nll_chain = task_nll(out.logits[..., :3], y[:, :3], mask[:, :3], chain)           # [B, K]
    nll_heads = task_nll(out.logits[:, :1, 3:], y[:, 3:], mask[:, 3:], heads)[:, 0]   # [B]
    want = (nll_heads + mixture_nll(nll_chain, out.log_w)).mean()
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    p = m.eval().predict(x, L=3, generator=torch.Generator().manual_seed(1))
    assert p.shape == (6, 8) and torch.allclose(p[:, 3:6].sum(1), torch.ones(6), atol=1e-5)
