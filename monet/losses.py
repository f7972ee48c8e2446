"""Losses. Every family is trained with the same mixture negative log-likelihood (MONET eq. 18):

    loss_i = -logsumexp_m [ log pi~_m + sum_t w_t log p^{sigma_m}(y_t | ...) ]

which is the plain weighted BCE sum when K = 1 (VMN, MRNN, oracle). On top: the Dice term
(weight lambda), the weighted asymmetric loss (paper 002 eqs. 8-9), cross-entropy for multiclass
tasks, the CCC loss for regression, per-task weights and label masks.

Example:
    >>> import torch
    >>> from monet.tasks import TaskSpec
    >>> spec = TaskSpec.binary("ab")
    >>> nll = task_nll(torch.zeros(1, 1, 2), torch.ones(1, 2), torch.ones(1, 2), spec)
    >>> round(float(nll), 4)  # 2 * log 2
    1.3863
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from monet.tasks import TaskSpec


def inverse_frequency_weights(y: torch.Tensor, mask: Optional[torch.Tensor] = None,
                              eps: float = 1e-6) -> torch.Tensor:
    """Per-task weights proportional to 1 / occurrence rate, normalised to mean 1 ``[T]``."""
    mask = torch.ones_like(y) if mask is None else mask
    rate = (y * mask).sum(0) / mask.sum(0).clamp_min(1.0)
    w = 1.0 / rate.clamp_min(eps)
    return w / w.mean()


def prior_log_odds(y: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   eps: float = 1e-3) -> torch.Tensor:
    """log(p / (1 - p)) of each binary task's training frequency (bias initialisation) ``[T]``."""
    mask = torch.ones_like(y) if mask is None else mask
    p = ((y * mask).sum(0) / mask.sum(0).clamp_min(1.0)).clamp(eps, 1 - eps)
    return torch.log(p / (1 - p))


def wasl(logits: torch.Tensor, y: torch.Tensor, gamma_neg: float = 4.0, gamma_pos: float = 1.0,
         margin: float = 0.05) -> torch.Tensor:
    """Element-wise asymmetric loss (paper 002 eq. 8, ASL of Ridnik et al.), before weighting:

    L+ = (1 - p)^gamma_pos log(p),  L- = p_m^gamma_neg log(1 - p_m),  p_m = max(p - m, 0);
    returns -(y L+ + (1 - y) L-).
    """
    p = torch.sigmoid(logits)
    pm = (p - margin).clamp_min(0.0)
    lp = (1 - p).pow(gamma_pos) * F.logsigmoid(logits)
    ln = pm.pow(gamma_neg) * torch.log((1 - pm).clamp_min(1e-8))
    return -(y * lp + (1 - y) * ln)


def task_nll(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, spec: TaskSpec,
             weights: Optional[torch.Tensor] = None, kind_binary: str = "bce") -> torch.Tensor:
    """Weighted negative log-likelihood summed over tasks.

    Args:
        logits: ``[B, K, D]`` raw outputs (canonical task order).
        y, mask: ``[B, T]``.
        weights: ``[T]`` per-task weights (default 1).
        kind_binary: ``bce`` or ``wasl`` for binary tasks.
    Returns:
        ``[B, K]``.
    """
    B, K, _ = logits.shape
    T = spec.T
    w = logits.new_ones(T) if weights is None else weights.to(logits)
    ym, mm = y[:, None, :].expand(B, K, T), mask[:, None, :]
    if spec.all_binary:
        if kind_binary == "wasl":
            el = wasl(logits, ym)
        else:
            el = F.binary_cross_entropy_with_logits(logits, ym, reduction="none")
        return (el * mm * w).sum(-1)
    total = logits.new_zeros(B, K)
    o = 0
    for j, t in enumerate(spec.tasks):
        z = logits[..., o:o + t.out_dim]
        yt, mt = y[:, j], mask[:, j]
        if t.kind == "binary":
            el = (wasl(z[..., 0], yt[:, None].expand(B, K)) if kind_binary == "wasl" else
                  F.binary_cross_entropy_with_logits(z[..., 0], yt[:, None].expand(B, K),
                                                     reduction="none"))
        elif t.kind == "multiclass":
            tgt = yt.clamp_min(0).long()[:, None].expand(B, K)
            el = F.cross_entropy(z.reshape(B * K, -1), tgt.reshape(-1),
                                 reduction="none").view(B, K)
        else:
            el = 0.5 * (z[..., 0] - yt[:, None]) ** 2
        total = total + w[j] * el * mt[:, None]
        o += t.out_dim
    return total


def mixture_nll(nll: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """-logsumexp_k(log_w - nll) per example (eq. 18 with order dropout, eq. 25). ``[B]``."""
    return -torch.logsumexp(log_w - nll, dim=1)


def dice_loss(probs: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
              weights: Optional[torch.Tensor] = None, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per task, averaged with the task weights:
    ``1 - (2 sum p y + s) / (sum p^2 + sum y^2 + s)`` over the (masked) batch."""
    p, yy = probs * mask, y * mask
    num = 2 * (p * yy).sum(0) + smooth
    den = (p * p).sum(0) + (yy * yy).sum(0) + smooth
    d = 1 - num / den
    w = torch.ones_like(d) if weights is None else weights.to(d)
    return (d * w).sum() / w.sum()


def ccc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Concordance correlation coefficient of two 1-D tensors."""
    pm, tm = pred.mean(), target.mean()
    pv, tv = pred.var(unbiased=False), target.var(unbiased=False)
    cov = ((pred - pm) * (target - tm)).mean()
    return 2 * cov / (pv + tv + (pm - tm) ** 2 + 1e-8)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None):
    """1 - CCC over the present labels."""
    if mask is not None:
        keep = mask > 0
        pred, target = pred[keep], target[keep]
    if pred.numel() < 2:
        return pred.new_zeros(())
    return 1 - ccc(pred, target)


def temperature_weights(spec: TaskSpec, temps: dict) -> torch.Tensor:
    """Per-task loss factors from group temperatures (paper 003 eqs. 3-5): 1/(2T) for binary
    tasks, 1/T for multiclass, 1 for regression; 1 for groups without a temperature."""
    w = []
    for t in spec.tasks:
        T = temps.get(t.group)
        if T is None or t.kind == "regression":
            w.append(1.0)
        else:
            w.append(1.0 / (2.0 * T) if t.kind == "binary" else 1.0 / T)
    return torch.tensor(w)
