"""What every model family shares: its output type and the mapping from logits to predictions.

Every family returns, in training mode, ``ModelOutput(logits [B, K, D], log_w [B, K])``: K joint
predictions per example (K = 1 for VMN and MRNN, the k kept orders for MONET) in the canonical
task order, and the log mixture weights (log pi~ of eq. 25; zeros when K = 1). The loss is then
the same for every family (``monet.losses.mixture_nll``).
"""
from __future__ import annotations

from typing import NamedTuple

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

    def order_parameters(self) -> list:
        """Parameters trained by the order optimizer (MONET's order logits u)."""
        return []

    def order_stats(self) -> dict:
        """Order-selection diagnostics (empty for families without an order)."""
        return {}
