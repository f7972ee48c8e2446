"""Vanilla multi-task networks (MONET §3.1.1, §4.2): a shared encoder and prediction heads.

* VMNC (common head): two (dense -> BN -> ReLU) then one dense layer with all task outputs.
* VMNS (separate heads): T heads of the same structure with one output each, computed together
  as grouped (batched) matrix products.

Example:
    >>> import torch
    >>> from monet.tasks import TaskSpec
    >>> from monet.models.encoders import MLPEncoder
    >>> m = VMN(MLPEncoder(2), 64, TaskSpec.binary("abc"), separate=True)
    >>> m(torch.zeros(4, 2)).logits.shape
    torch.Size([4, 1, 3])
"""
from __future__ import annotations

import math

import torch
from torch import nn

from monet.models.base import ModelOutput, MultiTaskModel
from monet.models.encoders import encoder_from_config
from monet.registry import FAMILIES
from monet.tasks import TaskSpec


class GroupedLinear(nn.Module):
    """T independent linear layers applied at once: ``[B, T, in] -> [B, T, out]``."""

    def __init__(self, groups: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(groups, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return torch.einsum("bti,tio->bto", x, self.weight) + self.bias


class VMN(MultiTaskModel):
    """VMNC (``separate=False``) or VMNS (``separate=True``)."""

    def __init__(self, encoder: nn.Module, enc_dim: int, spec: TaskSpec, separate: bool = False,
                 head_width: int = 64, dropout: float = 0.0):
        super().__init__(spec)
        self.encoder, self.separate = encoder, separate
        T, w, D = spec.T, head_width, sum(spec.out_dims)
        if not separate:
            self.head = nn.Sequential(
                nn.Linear(enc_dim, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(w, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Dropout(dropout),
                nn.Linear(w, D))
        else:
            self.T, self.w = T, w
            self.l1 = nn.Linear(enc_dim, T * w)
            self.bn1 = nn.BatchNorm1d(T * w)
            self.l2 = GroupedLinear(T, w, w)
            self.bn2 = nn.BatchNorm1d(T * w)
            dmax = max(spec.out_dims)
            self.l3 = GroupedLinear(T, w, dmax)
            self.drop = nn.Dropout(dropout)
            # flat output index -> position in the [T, dmax] padded output
            idx = [t * dmax + j for t, d in enumerate(spec.out_dims) for j in range(d)]
            self.register_buffer("out_index", torch.tensor(idx, dtype=torch.long), persistent=False)

    def init_binary_bias(self, log_odds: torch.Tensor) -> None:
        """Output bias of the binary tasks (in ``spec.indices('binary')`` order) <- ``log_odds``."""
        offs = torch.tensor([self.spec.offsets[j] for j in self.spec.indices("binary")])
        with torch.no_grad():
            if not self.separate:
                self.head[-1].bias[offs] = log_odds.to(self.head[-1].bias)
            else:
                self.l3.bias.view(-1)[self.out_index[offs]] = log_odds.to(self.l3.bias)

    def logits(self, x):  # [B, ...] -> [B, D]
        z = self.encoder(x)
        if not self.separate:
            return self.head(z)
        B = z.shape[0]
        h = self.drop(torch.relu(self.bn1(self.l1(z))))                       # [B, T*w]
        h = self.l2(h.view(B, self.T, self.w)).reshape(B, -1)                 # [B, T*w]
        h = self.drop(torch.relu(self.bn2(h))).view(B, self.T, self.w)
        return self.l3(h).reshape(B, -1)[:, self.out_index]                   # [B, D]

    def forward(self, x, y=None, mask=None, generator=None) -> ModelOutput:
        lg = self.logits(x)
        return ModelOutput(lg[:, None, :], lg.new_zeros(lg.shape[0], 1))

    @torch.no_grad()
    def predict(self, x, L=None, generator=None):
        return self.activate(self.logits(x))


@FAMILIES.register("vmnc")
def vmnc(config, spec: TaskSpec, input_shape) -> VMN:
    """VMNC: the shared encoder and one common head."""
    enc, dim = encoder_from_config(config, input_shape)
    return VMN(enc, dim, spec, separate=False, head_width=config.head_width, dropout=config.dropout)


@FAMILIES.register("vmns")
def vmns(config, spec: TaskSpec, input_shape) -> VMN:
    """VMNS: the shared encoder and one head per task."""
    enc, dim = encoder_from_config(config, input_shape)
    return VMN(enc, dim, spec, separate=True, head_width=config.head_width, dropout=config.dropout)
