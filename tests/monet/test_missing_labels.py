"""Missing labels (BP4D/DISFA code 9, Aff-Wild2 -1 / -5): masked in every loss and metric; in
MONET/MRNN fed back to the next cell as 0, not as a negative."""
import copy

import pytest
import torch

from monet.config import TrainConfig
from monet.metrics import compute_metrics
from monet.models import create_model
from monet.tasks import Task, TaskSpec
from monet.train import compute_loss

SPEC = TaskSpec((Task("AU1", group="au"), Task("AU2", group="au"), Task("AU4", group="au"),
                 Task("expr", "multiclass", 4, "expr"),
                 Task("valence", "regression", 1, "va"), Task("arousal", "regression", 1, "va")))
FAMILIES6 = ["vmnc", "vmns", "mrnn", "monet", "mtt", "mtca"]
SMALL = dict(M=6, k=3, hidden=16, enc_width=16, head_width=16, d_model=16, heads=2, n_x=1,
             n_t=1, n_d=2, knn=2, dice_lambda=0.5)


def batch():
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    y = torch.cat([(torch.rand(8, 3) > 0.5).float(), torch.randint(0, 4, (8, 1)).float(),
                   torch.rand(8, 2) * 2 - 1], dim=1)
    mask = torch.ones(8, 6)
    mask[0, 1] = mask[2, 0] = mask[3, 3] = mask[4, 4] = mask[4, 5] = mask[5, 2] = 0
    mask[6, :3] = 0                                   # all AUs of one frame missing
    return x, y, mask


def with_placeholders(y, mask, codes):
    """``y`` with the masked entries replaced by the dataset's missing-label codes."""
    junk = torch.tensor(codes, dtype=torch.float32).expand_as(y)
    return torch.where(mask > 0, y, junk)


def loss_and_grads(model, x, y, mask, config):
    m = copy.deepcopy(model).train()
    torch.manual_seed(1)
    gen = torch.Generator().manual_seed(2)
    out = m(x, y, mask=mask, generator=gen)
    w = torch.ones(SPEC.T)
    loss, _ = compute_loss(m, out, y, mask, SPEC, w, config)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("family", FAMILIES6)
def test_a_masked_label_changes_neither_loss_nor_gradients(family):
    c = TrainConfig(family=family, **SMALL)
    model = create_model(c, SPEC, (5,))
    x, y, mask = batch()
    base = with_placeholders(y, mask, [0, 0, 0, 0, 0, 0])          # today's zero fill
    codes = [
        with_placeholders(y, mask, [9, 9, 9, -1, -5, -5]),        # BP4D 9, Aff-Wild2 -1 / -5
        with_placeholders(y, mask, [1, 1, 1, 3, 0.9, -0.9]),      # valid-looking values
    ]
    l0, g0 = loss_and_grads(model, x, base, mask, c)
    assert g0
    for yc in codes:
        l1, g1 = loss_and_grads(model, x, yc, mask, c)
        assert l1 == pytest.approx(l0, rel=1e-6, abs=1e-7)
        assert g1.keys() == g0.keys()
        for n in g0:
            assert torch.allclose(g0[n], g1[n], atol=1e-6), (family, n)


@pytest.mark.parametrize("family", ["monet", "mrnn"])
def test_missing_chain_label_is_fed_back_as_zero_not_as_negative(family):
    c = TrainConfig(family=family, M=1, k=1, hidden=16, enc_width=16, order=[0, 1, 2])
    m = create_model(c, SPEC, (5,)).eval()
    x = torch.randn(1, 5)
    y = torch.tensor([[0.0, 1, 1, 2, 0.1, 0.2]])
    missing = torch.tensor([[0.0, 1, 1, 1, 1, 1]])                 # AU1 (step 1) unknown
    fb = m.signed_feedback(y, missing)
    assert fb.tolist() == [[0.0, 1.0, 1.0]]
    assert m.signed_feedback(y, torch.ones(1, 6)).tolist() == [[-1.0, 1.0, 1.0]]
    nan_y = y.clone()
    nan_y[0, 0] = float("nan")
    assert m.signed_feedback(nan_y, None).tolist() == [[0.0, 1.0, 1.0]]  # no mask: NaN = missing
    with torch.no_grad():
        as_missing = m(x, y, mask=missing).logits[0, 0]
        as_negative = m(x, y, mask=torch.ones(1, 6)).logits[0, 0]
    assert as_missing[0] == as_negative[0]                 # step 1 sees no feedback either way
    assert not torch.allclose(as_missing[1:3], as_negative[1:3])   # later steps: 0 != -1


def test_reference_loop_agrees_on_masked_feedback():
    from monet.models.monet_reference import reference_forward

    spec = TaskSpec.binary("abcd")
    m = create_model(TrainConfig(family="monet", M=6, k=3, hidden=16, enc_width=16), spec, (5,))
    x, y = torch.randn(5, 5), (torch.rand(5, 4) > 0.5).float()
    mask = (torch.rand(5, 4) > 0.3).float()
    kept = m.sample_kept(5)
    a = m(x, y, mask=mask, kept=kept).logits
    b = reference_forward(m, x, y, kept, mask=mask).logits
    assert torch.allclose(a, b, atol=1e-5)


def test_metrics_ignore_masked_labels():
    pred = torch.tensor([[0.9, 0.2, 0.8, 0.1, 0.7, 0.1, 0.1, 0.4, 0.3],
                         [0.1, 0.7, 0.3, 0.1, 0.1, 0.7, 0.1, -0.4, 0.1],
                         [0.8, 0.9, 0.6, 0.6, 0.1, 0.2, 0.1, 0.2, -0.3]])
    y = torch.tensor([[1.0, 0, 1, 0, 0.5, 0.2], [0, 1, 0, 1, -0.4, 0.0], [1, 1, 1, 2, 0.1, -0.2]])
    mask = torch.ones(3, 6)
    mask[2, 1] = mask[1, 3] = mask[0, 4] = 0
    a = compute_metrics(pred, with_placeholders(y, mask, [9, 9, 9, -1, -5, -5]), mask, SPEC)
    b = compute_metrics(pred, with_placeholders(y, mask, [0, 0, 0, 3, 0.9, 0.9]), mask, SPEC)
    assert a == b
    assert a["acc/AU2"] == pytest.approx(1.0)              # rows 0 and 1 only
