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


def _present(y: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple:
    """``(y, mask)`` with absent labels set to 0, so NaN or -1 placeholders contribute nothing."""
    mask = torch.ones_like(y) if mask is None else mask.to(y)
    return torch.where(mask > 0, y, torch.zeros_like(y)), mask


def inverse_frequency_weights(y: torch.Tensor, mask: Optional[torch.Tensor] = None,
                              eps: float = 1e-6) -> torch.Tensor:
    """Per-task weights proportional to 1 / occurrence rate, normalised to mean 1 ``[T]``
    (MONET §4.2 per-AU weighting; paper 002 eq. 9, ``w_i = N (1/r_i) / sum_j 1/r_j``).

    A task with no positive among its ``n`` present labels counts as rate ``1 / (n + 1)`` (as if one
    more, positive, label were present), and a task with no present label gets rate 1, so that
    one empty task cannot push every other weight to 0.

    Args:
        y: ``[N, T]`` 0/1 labels.
        mask: ``[N, T]`` presence mask (default: all present).
        eps: lower bound of the rate.

    Example:
        >>> inverse_frequency_weights(torch.tensor([[1., 1.], [0., 1.]]))  # rates 1/2, 1
        tensor([1.3333, 0.6667])
    """
    y, mask = _present(y, mask)
    n = mask.sum(0)
    rate = (y * mask).sum(0) / n.clamp_min(1.0)
    rate = torch.maximum(rate, 1.0 / (n + 1.0)).clamp_min(eps)
    w = 1.0 / rate
    return w / w.mean()


def class_frequency_weights(y: torch.Tensor, num_classes: int, mask: Optional[torch.Tensor] = None,
                            eps: float = 1e-6) -> torch.Tensor:
    """Per-class weights ``P_i`` of the weighted cross-entropy (paper 002 eq. 10): proportional
    to 1 / class frequency among the present labels, normalised to mean 1 ``[C]``. A class that
    never occurs counts as occurring once.

    Args:
        y: ``[N]`` class indices (float or long).
        num_classes: C.
        mask: ``[N]`` presence mask (default: all present).

    Example:
        >>> class_frequency_weights(torch.tensor([0., 0., 0., 1.]), 2)  # freqs 3/4, 1/4
        tensor([0.5000, 1.5000])
    """
    y, mask = _present(y.float(), mask)
    counts = torch.zeros(num_classes).index_add_(0, y.long().clamp(0, num_classes - 1),
                                                 (mask > 0).float())
    freq = (counts.clamp_min(1.0) / counts.sum().clamp_min(1.0)).clamp_min(eps)
    w = 1.0 / freq
    return w / w.mean()


def prior_log_odds(y: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   eps: float = 1e-3) -> torch.Tensor:
    """log(p / (1 - p)) of each binary task's training frequency (bias initialisation) ``[T]``;
    p is clamped to ``[eps, 1 - eps]`` and is 1/2 (log-odds 0) for a task with no present label.

    Example:
        >>> prior_log_odds(torch.tensor([[1.], [0.], [0.], [0.]]))  # log(1/3)
        tensor([-1.0986])
    """
    y, mask = _present(y, mask)
    n = mask.sum(0)
    p = torch.where(n > 0, (y * mask).sum(0) / n.clamp_min(1.0), torch.full_like(n, 0.5))
    p = p.clamp(eps, 1 - eps)
    return torch.log(p / (1 - p))


def wasl(logits: torch.Tensor, y: torch.Tensor, gamma_neg: float = 1.0, gamma_pos: float = 0.0,
         margin: float = 0.0, detach_focus: bool = True) -> torch.Tensor:
    """Element-wise weighted asymmetric loss before the per-task weights (paper 002 eq. 8, the
    loss of Luo et al.'s ME-GraphAU): ``-(y log p + (1 - y) p log(1 - p))``.

    The negative term is down-weighted by the predicted probability itself, so easy negatives
    (frequent in AU data) count little. This is the asymmetric loss of Ridnik et al. with
    ``gamma_pos = 0``, ``gamma_neg = 1`` and no margin; those are the defaults, the general form
    ``L+ = (1 - p)^gamma_pos log p``, ``L- = p_m^gamma_neg log(1 - p_m)``, ``p_m = max(p - m, 0)``
    is available through the arguments. As in the reference code the focusing factors get no
    gradient (``detach_focus``).

    Args:
        logits: raw outputs, any shape.
        y: 0/1 labels of the same shape.

    Returns:
        The element-wise loss, same shape.

    Example:
        >>> # y = 0, p = 1/2: -(1/2) log(1/2)
        >>> round(float(wasl(torch.zeros(1), torch.zeros(1))), 4)
        0.3466
    """
    p = torch.sigmoid(logits)
    if margin > 0:
        pm = (p - margin).clamp_min(0.0)
        log_neg = torch.log((1 - pm).clamp_min(1e-8))
    else:
        pm, log_neg = p, F.logsigmoid(-logits)
    f_pos, f_neg = (1 - p).pow(gamma_pos), pm.pow(gamma_neg)
    if detach_focus:
        f_pos, f_neg = f_pos.detach(), f_neg.detach()
    return -(y * f_pos * F.logsigmoid(logits) + (1 - y) * f_neg * log_neg)


def task_nll(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, spec: TaskSpec,
             weights: Optional[torch.Tensor] = None, kind_binary: str = "bce",
             class_weights: Optional[dict] = None) -> torch.Tensor:
    """Weighted negative log-likelihood summed over tasks.

    Binary tasks: BCE on the logits (or :func:`wasl`); multiclass: cross-entropy, weighted per
    class when ``class_weights`` names the task (paper 002 eq. 10,
    ``-sum_i P_i y_i log softmax_i``); regression: ``(z - y)^2 / 2`` (Gaussian NLL, variance 1).
    Absent labels (``mask == 0``) contribute nothing, whatever placeholder value they hold.

    Args:
        logits: ``[B, K, D]`` raw outputs (canonical task order).
        y, mask: ``[B, T]``.
        weights: ``[T]`` per-task weights (default 1).
        kind_binary: ``bce`` or ``wasl`` for binary tasks.
        class_weights: optional ``{task name or index: [C] weights}`` for multiclass tasks
            (e.g. from :func:`class_frequency_weights`).
    Returns:
        ``[B, K]``.

    Example:
        >>> spec = TaskSpec.binary("ab")
        >>> task_nll(torch.zeros(1, 1, 2), torch.ones(1, 2), torch.tensor([[1., 0.]]), spec)
        tensor([[0.6931]])
    """
    B, K, _ = logits.shape
    T = spec.T
    w = logits.new_ones(T) if weights is None else weights.to(logits)
    y, mask = _present(y.to(logits), mask)
    ym, mm = y[:, None, :].expand(B, K, T), mask[:, None, :]
    if spec.all_binary:
        if kind_binary == "wasl":
            el = wasl(logits, ym)
        else:
            el = F.binary_cross_entropy_with_logits(logits, ym, reduction="none")
        return (el * mm * w).sum(-1)
    class_weights = class_weights or {}
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
            cw = class_weights.get(t.name, class_weights.get(j))
            tgt = yt.clamp_min(0).long()[:, None].expand(B, K)
            el = F.cross_entropy(z.reshape(B * K, -1), tgt.reshape(-1), reduction="none",
                                 weight=None if cw is None else torch.as_tensor(cw).to(logits)
                                 ).view(B, K)
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
    y, mask = _present(y.to(probs), mask)
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
    tasks, 1/T for multiclass, and 1/sigma^2 for regression (the temperature of a regression group
    is its variance; the regression NLL ``(z - y)^2 / 2`` then becomes ``MSE / (2 sigma^2)``);
    1 for groups without a temperature.

    Example:
        >>> from monet.tasks import Task
        >>> spec = TaskSpec((Task("a"), Task("e", "multiclass", 3, "e"),
        ...                  Task("v", "regression", 1, "v")))
        >>> temperature_weights(spec, {"task": 2.0, "e": 5.0, "v": 4.0})
        tensor([0.2500, 0.2000, 0.2500])
    """
    w = []
    for t in spec.tasks:
        T = temps.get(t.group)
        if T is None:
            w.append(1.0)
        elif t.kind == "regression":
            w.append(1.0 / T)
        else:
            w.append(1.0 / (2.0 * T) if t.kind == "binary" else 1.0 / T)
    return torch.tensor(w)
