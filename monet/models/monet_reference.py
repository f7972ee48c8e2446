"""Plain implementations of MONET's teacher-forced forward pass and of its inference.

``reference_forward`` computes exactly what ``MultiOrderNet.forward`` computes, one order at a
time (for each order, the examples that kept it run through the T steps with the cells of that
order). It is the reference the tests compare the vectorised version against (loss and
gradients), and the "per-order loop" of ``benchmarks/monet_step.py``. ``reference_predict`` is
Algorithm 2 with one row per trajectory (all ``B * L`` of them at every step), the reference of
``MultiOrderNet.predict``, which runs each distinct trajectory state once. Not used in training.

Example:
    >>> import torch
    >>> from monet.tasks import TaskSpec
    >>> from monet.models.encoders import MLPEncoder
    >>> from monet.models.monet import MultiOrderNet
    >>> net = MultiOrderNet(MLPEncoder(2), 64, TaskSpec.binary("abc"), M=6, k=3).train()
    >>> x, y = torch.randn(5, 2), torch.ones(5, 3)
    >>> kept = net.sample_kept(5)
    >>> torch.allclose(reference_forward(net, x, y, kept).logits, net(x, y, kept=kept).logits, atol=1e-5)
    True
"""
from __future__ import annotations

import torch

from monet.models.base import ModelOutput


def reference_forward(net, x, y, kept, mask=None) -> ModelOutput:
    """Per-order loop forward of a :class:`MultiOrderNet` over a binary-only spec (see module
    docstring); a label with ``mask`` 0 is fed back as 0."""
    if mask is not None:
        y = torch.where(mask > 0, y, torch.full_like(y, 0.5))     # 2 * 0.5 - 1 = 0
    h0 = net.encode(x)
    B, K = kept.shape
    T = net.T
    logits = h0.new_zeros(B, K, T)
    for m in range(net.M):
        hit = kept == m                                    # [B, K]
        rows = hit.any(1).nonzero(as_tuple=True)[0]
        if len(rows) == 0:
            continue
        slot = hit[rows].float().argmax(1)                 # position of m among kept
        order = net.orders[m].tolist()
        h = h0[rows]
        fb = h0.new_zeros(len(rows), T)
        for t, task in enumerate(order):
            h = net.cell(task, net.feedback(fb), h)
            o = h @ net.head_w[task] + net.head_b[task]
            logits = logits.index_put((rows, slot, torch.full_like(rows, task)), o)
            if net.feedback_mode == "prev":
                fb = h0.new_zeros(len(rows), T)
            fb = fb.clone()
            fb[:, task] = 2.0 * y[rows, task] - 1.0
    if net.order_logits is None:
        log_w = h0.new_zeros(B, K)
    else:
        log_w = torch.log_softmax(net.order_logits[kept], dim=1)
    return ModelOutput(logits, log_w)


@torch.no_grad()
def reference_predict(net, x, L: int, generator=None) -> torch.Tensor:
    """Algorithm 2 on every trajectory: ``B * L`` rows, each with an order drawn from pi and
    labels drawn step by step from Bernoulli(p), the rows of task c through cell c at each
    step; returns the mean probability of the chain tasks ``[B, T]``. Draws from ``generator``
    in the same sequence as ``MultiOrderNet.predict``, so the two agree to float precision."""
    h0 = net.encode(x)
    B, T = h0.shape[0], net.T
    R = B * L
    if net.M == 1:
        s = torch.zeros(R, dtype=torch.long)
    else:
        s = torch.multinomial(net.pi().cpu(), R, replacement=True, generator=generator)
    ords = net.orders.cpu()[s]
    h = h0.repeat_interleave(L, dim=0)
    fb = h0.new_zeros(R, T)
    probs = h0.new_zeros(R, T)
    temp = net.temperature[net.chain_out]
    rows = torch.arange(R)
    for t in range(T):
        task = ords[:, t]
        h_new, p = torch.empty_like(h), h0.new_zeros(R)
        x_fb = net.feedback(fb)
        for c in task.unique().tolist():
            r = (task == c).nonzero(as_tuple=True)[0]
            h_new[r] = net.cell(c, x_fb[r], h[r])
            p[r] = torch.sigmoid((h_new[r] @ net.head_w[c] + net.head_b[c]) / temp[c])
        h = h_new
        probs[rows, task] = p
        u = torch.rand(R, generator=generator)
        sign = 2.0 * (u < p).to(h.dtype) - 1.0
        if net.feedback_mode == "prev":
            fb = h0.new_zeros(R, T)
        fb[rows, task] = sign
    return probs.view(B, L, T).mean(1)
