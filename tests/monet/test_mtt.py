"""The multi-task transformer (paper 003): shapes, gradients, eqs. 1-5 against hand-worked values,
learned temperatures (Kendall's log term), MixUp, temporal smoothing, registry and fit."""
import math

import pytest
import torch

from monet.config import TrainConfig
from monet.errors import ConfigError
from monet.losses import temperature_weights
from monet.models import create_model
from monet.models.base import ModelOutput
from monet.models.mtt import mtt, sincos_2d, temporal_smooth
from monet.registry import FAMILIES
from monet.tasks import Task, TaskSpec

LN2, LN3 = math.log(2), math.log(3)
# a small Aff-Wild2-like spec: 2 AUs, 3 expressions, valence/arousal  (D = 7 outputs)
SPEC = TaskSpec((Task("AU1", group="au"), Task("AU2", group="au"),
                 Task("expr", "multiclass", 3, "expr"),
                 Task("valence", "regression", 1, "va"), Task("arousal", "regression", 1, "va")))


def small(spec=SPEC, shape=(4,), **kw):
    c = TrainConfig(family="mtt", d_model=16, heads=2, n_x=1, n_t=1, n_d=2, **kw)
    torch.manual_seed(0)
    return mtt(c, spec, shape), c


def hand_batch():
    """Example 1: every label; example 2: AU1 only (AU2 missing, placeholder 9); example 3: none."""
    z = torch.tensor([[0.0, LN3, 0, 0, 0, 0.5, 0.0],
                      [0.0, 5.0, 1, 2, 3, 0.7, 0.1],
                      [3.0, 3.0, 3, 3, 3, 3.0, 3.0]])
    y = torch.tensor([[1.0, 0, 0, 0, 0], [0, 9, 2, 0.3, 0.1], [1, 1, 1, 1, 1]])
    m = torch.tensor([[1.0, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    return ModelOutput(z[:, None], torch.zeros(3, 1)), y, m


def test_image_forward_shapes_and_every_parameter_gets_a_gradient():
    c = TrainConfig(family="mtt", backbone="tiny_cnn", d_model=32, heads=4, n_x=2, n_t=2, n_d=3)
    m = mtt(c, SPEC, (3, 32, 32)).train()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([[1.0, 0, 2, 0.1, -0.2]] * 4)
    out = m(x, y)
    assert out.logits.shape == (4, 1, 7) and out.log_w.shape == (4, 1)
    loss, parts = m.loss(out, y, torch.ones(4, 5), torch.ones(5), c)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, missing
    p = m.eval().predict(x)
    assert p.shape == (4, 7)
    assert torch.allclose(p[:, 2:5].sum(1), torch.ones(4), atol=1e-5)   # expression softmax
    assert {"nll", "loss/au", "loss/expr", "loss/va"} <= set(parts)


def test_timm_feature_map_projected_by_1x1_conv():
    c = TrainConfig(family="mtt", backbone="resnet18", d_model=32, heads=4, n_x=1, n_t=1, n_d=1)
    m = mtt(c, SPEC, (3, 64, 64))
    assert isinstance(m.patches.proj, torch.nn.Conv2d) and m.patches.proj.kernel_size == (1, 1)
    assert m.patches.proj.in_channels == 512
    assert m.patches.pos.shape == (4, 32)                # 64 px / 32 = 2 x 2 patches
    assert m(torch.randn(2, 3, 64, 64)).logits.shape == (2, 1, 7)


def test_vector_input_becomes_tokens():
    m, _ = small()
    assert m.patches.pos.shape[0] == 4 and m(torch.randn(3, 4)).logits.shape == (3, 1, 7)


def test_sincos_2d_encodes_rows_and_columns():
    pe = sincos_2d(3, 5, 16)
    assert pe.shape == (15, 16) and pe.abs().max() <= 1.0
    assert len({tuple(r.tolist()) for r in pe}) == 15
    grid = pe.view(3, 5, 16)
    assert torch.allclose(grid[:, 0, :8], grid[:, 4, :8])       # first half: the row only
    assert torch.allclose(grid[0, :, 8:], grid[2, :, 8:])       # second half: the column only
    with pytest.raises(ConfigError, match="multiple of 4"):
        sincos_2d(2, 2, 18)


def test_loss_eqs_2_to_5_by_hand_with_paper_temperatures():
    m, c = small()
    out, y, mask = hand_batch()
    loss, parts = m.loss(out, y, mask, torch.ones(5), c)
    # example 1: L_a = mean(BCE(0, 1), BCE(ln 3, 0)) / (2 T_a) = (ln2 + ln4) / 2 / 2,
    # L_e = CE([0, 0, 0], 0) / T_e = ln3 / 5, L_v = mean(0.5^2, 0) / (2 * 1)
    l1 = 0.75 * LN2 + LN3 / 5 + 0.0625
    # example 2: only AU1 present: L_a = ln2 / 2, reweighted by G / n = 3 / 1
    l2 = 3 * LN2 / 2
    assert float(loss) == pytest.approx((l1 + l2) / 2, rel=1e-5)    # example 3 has no label
    assert float(parts["nll"]) == pytest.approx(float(loss))


def test_fixed_temperatures_not_counted_twice():
    temps = {"au": 2.0, "expr": 4.0, "va": 3.0}
    m, c = small(temperatures=temps)
    out, y, mask = hand_batch()
    w = temperature_weights(SPEC, temps)          # what train.build_loss_weights passes
    loss, _ = m.loss(out, y, mask, w, c)
    l1 = 1.5 * LN2 / 2 / 2 + LN3 / 4 + 0.125 / (2 * 3)
    l2 = 3 * LN2 / 2 / 2
    assert float(loss) == pytest.approx((l1 + l2) / 2, rel=1e-5)


def test_group_weights_scale_each_group():
    m, c = small(group_weights={"expr": 0.0, "va": 2.0})
    out, y, mask = hand_batch()
    loss, _ = m.loss(out, y, mask, torch.ones(5), c)
    l1 = 0.75 * LN2 + 0.0 + 2 * 0.0625
    assert float(loss) == pytest.approx((l1 + 1.5 * LN2) / 2, rel=1e-5)


def test_eq1_predictions_use_the_temperatures():
    m, _ = small()
    z = torch.tensor([[1.0, -2.0, 0.0, 1.0, 2.0, 0.3, -0.4]])
    p = m.activate(z)
    assert torch.allclose(p[0, :2], torch.sigmoid(z[0, :2] / 1.0))
    assert torch.allclose(p[0, 2:5], torch.softmax(z[0, 2:5] / 5.0, dim=0))   # T_e = 5
    assert torch.allclose(p[0, 5:], z[0, 5:])


def test_learned_temperatures_kendall_term_and_optimum():
    temps = {"au": 2.0, "expr": 4.0, "va": 3.0}
    m, c = small(temperatures=temps, weighting="uncertainty")
    assert torch.allclose(m.log_tau.exp(), torch.tensor([2.0, 4.0, 3.0]))
    out, y, mask = hand_batch()
    w = temperature_weights(SPEC, temps)          # as build_loss_weights passes them
    loss, parts = m.loss(out, y, mask, w, c)
    data = ((1.5 * LN2 / 2 / 2 + LN3 / 4 + 0.125 / 6) + 3 * LN2 / 4) / 2
    reg = 0.5 * (math.log(2) + math.log(4) + math.log(3))
    assert float(parts["uncertainty"].detach()) == pytest.approx(reg, rel=1e-6)
    assert float(loss.detach()) == pytest.approx(data + reg, rel=1e-5)
    # on the fully labelled example alone, d loss / d log T is 0 where
    # BCE/(2T) + 1/2 log T, CE/T + 1/2 log T and MSE/(2 s^2) + 1/2 log s^2 are smallest:
    # T_a = mean BCE, T_e = 2 CE, s_v^2 = MSE
    with torch.no_grad():
        m.log_tau.copy_(torch.tensor([1.5 * LN2, 2 * LN3, 0.125]).log())
    one = ModelOutput(out.logits[:1], out.log_w[:1])
    loss, _ = m.loss(one, y[:1], mask[:1], w, c)
    g, = torch.autograd.grad(loss, m.log_tau)
    assert torch.allclose(g, torch.zeros(3), atol=1e-6)
    # learned temperatures are what predictions use (eq. 1)
    assert torch.allclose(m.activate(torch.tensor([[0., 0, 0, 0, 2 * LN3, 0, 0]]))[0, 4],
                          torch.softmax(torch.tensor([0., 0, 2 * LN3]) / (2 * LN3), 0)[2])


def test_multitask_mixup_mixes_inputs_and_labels():
    m, c = small(spec=TaskSpec(SPEC.tasks[:3]), mixup=True, mixup_alpha=0.4)
    m.train()
    torch.manual_seed(3)
    x = torch.randn(6, 4)
    y = torch.tensor([[1.0, 0, 2], [0, 1, 1], [1, 1, 0], [0, 0, 2], [1, 0, 1], [0, 1, 0]])
    mask = torch.ones(6, 3)
    out = m(x, y)
    perm, lam = m._mix
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(6))
    assert torch.allclose(out.logits[:, 0], m.logits(lam * x + (1 - lam) * x[perm]), atol=1e-5)
    mixed, _ = m.loss(out, y, mask, torch.ones(3), c)
    la, _ = m.loss(out, y, mask, torch.ones(3), c)          # _mix was consumed: plain losses
    lb, _ = m.loss(out, y[perm], mask, torch.ones(3), c)
    want = lam * float(la.detach()) + (1 - lam) * float(lb.detach())
    assert float(mixed.detach()) == pytest.approx(want, rel=1e-5)
    m.eval()
    m(x, y)
    assert m._mix is None                                     # never at evaluation


def test_temporal_smoothing_averages_logits_then_activates():
    z = torch.tensor([[0.0, 2.0], [2.0, 0.0], [4.0, 4.0], [1.0, 1.0]])
    videos, frames = ["v", "v", "v", "w"], torch.tensor([10, 11, 13, 10])
    s = temporal_smooth(z, videos, frames, 3)       # window f-1..f+1; frame 12 is missing
    assert torch.allclose(s, torch.tensor([[1.0, 1.0], [1.0, 1.0], [4.0, 4.0], [1.0, 1.0]]))
    assert torch.equal(temporal_smooth(z, videos, frames, 1), z)
    m, _ = small(spec=TaskSpec(SPEC.tasks[:2]))
    x = torch.randn(4, 4)
    p = m.predict_video(x, videos, frames, S=3)
    assert torch.allclose(p, torch.sigmoid(temporal_smooth(m.logits(x), videos, frames, 3)))


def test_registered_and_built_by_create_model():
    assert "mtt" in FAMILIES and "mtca" in FAMILIES
    c = TrainConfig(family="mtt", d_model=16, heads=2, n_x=1, n_t=1, n_d=1,
                    temperatures={"expr": 2.0})
    m = create_model(c, SPEC, (4,))
    assert type(m).__name__ == "MultiTaskTransformer" and m.family == "mtt"
    assert m.tau().tolist() == [1.0, 2.0, 1.0]
    with pytest.raises(ConfigError, match="multiple of heads"):
        TrainConfig.from_dict({"family": "mtt", "d_model": 30, "heads": 4})


def test_fit_toy_with_learned_temperatures():
    from monet.data import load_dataset
    from monet.train import fit

    c = TrainConfig(dataset="toy", T=3, n_train=64, n_val=32, n_test=32, family="mtt",
                    d_model=16, heads=2, n_x=1, n_t=1, n_d=2, epochs=2, batch_size=16,
                    weighting="uncertainty", tensorboard=False)
    res = fit(c, load_dataset(c))
    met = res["metrics"]
    assert math.isfinite(met["train/loss"]) and math.isfinite(met["val/loss"])
    assert 0 <= met["val/mean_acc"] <= 1
    assert not torch.allclose(res["model"].log_tau.detach(), torch.zeros(1))  # trained
