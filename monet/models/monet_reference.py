"""A plain per-order loop implementation of MONET's teacher-forced forward pass.

It computes exactly what ``MultiOrderNet.forward`` computes, one order at a time (for each
order, the examples that kept it run through the T steps with the cells of that order). It is
the reference the tests compare the vectorised version against (loss and gradients), and the
"per-order loop" of ``benchmarks/monet_step.py``. Not used in training.

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
