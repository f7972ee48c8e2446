"""Metrics with flat, stable names: ``acc/<task>``, ``f1/<task>``, ``mean_acc``, ``mean_f1``,
``ccc/<task>``, ``mean_ccc`` and, for the Aff-Wild2 multi-task protocol, ``p_mtl``.

Example:
    >>> import torch
    >>> from monet.tasks import TaskSpec
    >>> m = compute_metrics(torch.tensor([[0.9], [0.2]]), torch.tensor([[1.], [1.]]),
    ...                     torch.ones(2, 1), TaskSpec.binary(["a"]))
    >>> m["acc/a"], round(m["f1/a"], 4)
    (0.5, 0.6667)
"""
from __future__ import annotations

import numpy as np
import torch

from monet.tasks import TaskSpec


def f1_binary(pred: np.ndarray, y: np.ndarray) -> float:
    """F1 of the positive class (0 when there are no positives predicted nor present)."""
    tp = float(((pred == 1) & (y == 1)).sum())
    fp = float(((pred == 1) & (y == 0)).sum())
    fn = float(((pred == 0) & (y == 1)).sum())
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def f1_macro(pred: np.ndarray, y: np.ndarray, n: int) -> float:
    return float(np.mean([f1_binary((pred == c).astype(int), (y == c).astype(int)) for c in range(n)]))


def ccc_np(p: np.ndarray, t: np.ndarray) -> float:
    if len(p) < 2:
        return 0.0
    pm, tm = p.mean(), t.mean()
    cov = ((p - pm) * (t - tm)).mean()
    return float(2 * cov / (p.var() + t.var() + (pm - tm) ** 2 + 1e-12))


def compute_metrics(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                    spec: TaskSpec, threshold: float = 0.5) -> dict:
    """Metrics of predictions ``[N, D]`` (probabilities / values) against labels ``[N, T]``."""
    pred, y, mask = (v.detach().cpu().numpy() for v in (pred, y, mask))
    out, o = {}, 0
    accs, f1s, cccs, group_f1, group_ccc = [], [], [], {}, {}
    for j, t in enumerate(spec.tasks):
        keep = mask[:, j] > 0
        yt = y[keep, j]
        z = pred[keep, o:o + t.out_dim]
        if t.kind == "binary":
            hard = (z[:, 0] >= threshold).astype(int)
            yi = yt.astype(int)
            acc = float((hard == yi).mean()) if len(yi) else 0.0
            f1 = f1_binary(hard, yi)
        elif t.kind == "multiclass":
            hard, yi = z.argmax(1), yt.astype(int)
            acc = float((hard == yi).mean()) if len(yi) else 0.0
            f1 = f1_macro(hard, yi, t.num_classes)
        else:
            c = ccc_np(z[:, 0], yt)
            out[f"ccc/{t.name}"] = c
            cccs.append(c)
            group_ccc.setdefault(t.group, []).append(c)
            o += t.out_dim
            continue
        out[f"acc/{t.name}"], out[f"f1/{t.name}"] = acc, f1
        accs.append(acc)
        f1s.append(f1)
        group_f1.setdefault(t.group, []).append(f1)
        o += t.out_dim
    if accs:
        out["mean_acc"] = float(np.mean(accs))
        out["mean_f1"] = float(np.mean(f1s))
    if cccs:
        out["mean_ccc"] = float(np.mean(cccs))
    if len(spec.groups) > 1:
        for g, v in group_f1.items():
            out[f"mean_f1/{g}"] = float(np.mean(v))
    if {"au", "expr", "va"} <= set(spec.groups):
        va = group_ccc.get("va", [])
        out["p_mtl"] = out["mean_f1/au"] + out["mean_f1/expr"] + (float(np.mean(va)) if va else 0.0)
    return out
