"""What every model family shares: its output type and the mapping from logits to predictions.

Every family returns, in training mode, ``ModelOutput(logits [B, K, D], log_w [B, K])``: K joint
predictions per example (K = 1 for VMN and MRNN, the k kept orders for MONET) in the canonical
task order, and the log mixture weights (log pi~ of eq. 25; zeros when K = 1). The loss is then
the same for every family (``monet.losses.mixture_nll``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from monet.tasks import TaskSpec


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [B, K, D] raw outputs, canonical task order
    log_w: torch.Tensor   # [B, K]    log mixture weights (log-softmax over the K)


class MultiTaskModel(nn.Module):
    """Base class: holds the :class:`TaskSpec` and per-output logit temperatures."""

    family = "base"

    def __init__(self, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        D = sum(spec.out_dims)
        self.register_buffer("temperature", torch.ones(D), persistent=False)
        self._slices = []
        o = 0
        for t in spec.tasks:
            self._slices.append((t, slice(o, o + t.out_dim)))
            o += t.out_dim

    def set_temperatures(self, temps: dict) -> None:
        """Logit temperature per task group (paper 003: p = sigmoid(u / T_a), softmax(u / T_e))."""
        tv = torch.ones_like(self.temperature)
        for t, sl in self._slices:
            if t.group in temps and t.kind != "regression":
                tv[sl] = float(temps[t.group])
        self.temperature.copy_(tv)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Raw outputs ``[..., D]`` -> predictions: probabilities (binary: P(y=1); multiclass:
        class probabilities) or values (regression)."""
        z = logits / self.temperature
        out = torch.empty_like(z)
        for t, sl in self._slices:
            if t.kind == "binary":
                out[..., sl] = torch.sigmoid(z[..., sl])
            elif t.kind == "multiclass":
                out[..., sl] = torch.softmax(z[..., sl], dim=-1)
            else:
                out[..., sl] = z[..., sl]
        return out

    def init_binary_bias(self, log_odds: torch.Tensor) -> None:
        """Set the output bias of the binary tasks (bias initialisation from label priors)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ loss weighting
    def configure_loss(self, config) -> None:
        """Per-group loss weights and, with ``config.weighting == 'uncertainty'``, one learned
        log temperature per task group (Kendall et al.; paper 003 eqs. 3-5).

        Sets ``group_w`` ``[G]`` (``config.group_weights``, 1 for a group not named) and
        ``log_tau`` ``[G]`` (a parameter initialised at log of ``config.temperatures`` or of the
        group's :func:`default_temperature`; None when the weighting is fixed).
        """
        groups = list(self.spec.groups)
        gw = dict(getattr(config, "group_weights", None) or {})
        self.register_buffer("group_w", torch.tensor([float(gw.get(g, 1.0)) for g in groups]),
                             persistent=False)
        self.register_buffer("task_group", torch.tensor([groups.index(t.group)
                                                         for t in self.spec.tasks]),
                             persistent=False)
        if getattr(config, "weighting", "fixed") == "uncertainty":
            temps = dict(getattr(config, "temperatures", None) or {})
            init = [math.log(float(temps.get(g, self.default_temperature(g)))) for g in groups]
            self.log_tau = nn.Parameter(torch.tensor(init))
        else:
            self.log_tau = None

    def default_temperature(self, group: str) -> float:
        """The temperature (variance for regression) of ``group`` when the config names none."""
        return 1.0

    def group_kind(self, group: str) -> str:
        """The kind of the tasks of ``group`` (the first task's)."""
        return next(t.kind for t in self.spec.tasks if t.group == group)

    def group_scale(self, weights: torch.Tensor, fixed_temps: Optional[dict] = None) -> tuple:
        """Per-task loss weights with the group weights and learned temperatures applied.

        Args:
            weights: ``[T]`` per-task weights as ``train.build_loss_weights`` gives them (their
                fixed temperature factors, from ``fixed_temps``, are replaced by the learned
                ones when ``log_tau`` is set).
            fixed_temps: the ``config.temperatures`` those weights hold.
        Returns:
            ``(w [T], reg)``: the weights and the scalar log term ``sum_g 1/2 log T_g`` (0 when the
            weighting is fixed).
        """
        from monet.losses import temperature_weights

        if not hasattr(self, "group_w"):
            return weights, weights.new_zeros(())
        w = weights * self.group_w.to(weights)[self.task_group]
        if getattr(self, "log_tau", None) is None:
            return w, weights.new_zeros(())
        if fixed_temps:
            w = w / temperature_weights(self.spec, fixed_temps).to(w)
        tau = self.log_tau.exp()[self.task_group]                                   # [T]
        # eqs. 3-5: BCE / (2 T_a), CE / T_e, MSE / (2 sigma^2); the regression NLL is already
        # (z - y)^2 / 2, so its factor is 1 / sigma^2.
        kind = torch.tensor([0.5 if t.kind == "binary" else 1.0 for t in self.spec.tasks],
                            device=w.device)
        return w * kind / tau, 0.5 * self.log_tau.sum()

    def order_parameters(self) -> list:
        """Parameters trained by the order optimizer (MONET's order logits u)."""
        return []

    def order_stats(self) -> dict:
        """Order-selection diagnostics (empty for families without an order)."""
        return {}
