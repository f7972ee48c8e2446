"""Multi-task cross attention network with an AU relation graph (paper 002, Nguyen et al., §3).

Architecture: a backbone gives the image feature ``X`` (timm model with its global pooling, or
``tiny_cnn``; vector input: the MLP encoder); then

* **ANFL** (§3.1, from ME-GraphAU) over the binary tasks: one FC layer per AU,
  ``v_i = ReLU(W_i X + b_i)`` (eq. 1; the paper's sigma read as ReLU, as in ME-GraphAU); a graph
  on the dot products ``v_i . v_j`` keeping each node's ``k`` largest (itself included; the kNN
  graph); one GCN layer, ``V' = ReLU(V + BN(A_n V U + V W))`` with ``A_n = D^-1/2 A D^-1/2``
  (eq. 2); and the AU probability as the cosine similarity of ``ReLU(v'_i)`` with a learned
  ``ReLU(s_i)`` (eq. 3), in [0, 1];
* **VA head** (eq. 4): ``tanh(BN(W_VA X + b_VA))``;
* **FER head** (eq. 5): ``y~_EX = W_EX X + b_EX``;
* **AU-to-FER cross attention** (eqs. 6-7, ``config.cross_attn``):
  ``a = tanh(W_q y_AU + W_k y~_EX)``, ``y_EX = a * y~_EX``.

Outputs follow the house convention: AU "logits" are ``log(p / (1 - p))`` of the cosine
probability (so ``sigmoid`` gives eq. 3 back), expression logits are ``y_EX``, VA outputs are
the values.

Loss (§3.4), each term over the present labels only:

* AU: the weighted asymmetric loss (eq. 8), ``-(1/N) sum_i w_i [y log p + (1 - y) p log(1 - p)]``
  (``monet.losses.wasl``, focusing factor without gradient), mean over the present AUs; ``w_i``
  from eq. 9, ``N (1/r_i) / sum_j (1/r_j)``;
* EX: weighted cross-entropy (eq. 10), ``-P_e log softmax_e(y_EX)``; ``P`` proportional to
  1 / class frequency, mean 1;
* VA: ``sum_{V, A} (1 - CCC)`` over the batch (eqs. 11-12).

The rates ``r_i`` and class frequencies come from the training labels this model has seen: two
buffers of counts updated at every training batch (so after one epoch they are the training
distribution; they are saved in checkpoints). ``task_weighting`` and the fixed ``temperatures``
therefore do not enter this loss. The total is ``sum_g w_g L_g`` with the group weights
``config.group_weights`` or, with ``config.weighting = 'uncertainty'``, ``sum_g c_g L_g / T_g +
1/2 log T_g`` with learned ``log T_g`` (``c`` = 1/2 for AU and VA, 1 for EX, as paper 003).

The staged schedule of §4.3 (``config.au_steps``): for the first ``au_steps`` training batches
only the AU loss is used; afterwards all three. Multi-task MixUp (``config.mixup``) as in
:mod:`monet.models.mtt`. The metric P_MTL (eq. 13) is ``monet.metrics``' ``p_mtl``
(mean AU F1 + mean expression F1 + mean VA CCC).

Example:
    >>> import torch
    >>> from monet.config import TrainConfig
    >>> from monet.data.affwild2 import spec
    >>> c = TrainConfig(family="mtca", backbone="tiny_cnn", d_model=16, knn=3)
    >>> m = mtca(c, spec(), (3, 32, 32))
    >>> m(torch.zeros(2, 3, 32, 32)).logits.shape
    torch.Size([2, 1, 22])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from monet.errors import ConfigError
from monet.losses import ccc_loss, wasl
from monet.models.base import ModelOutput, MultiTaskModel
from monet.models.encoders import MLPEncoder, conv_feature_map
from monet.registry import FAMILIES
from monet.tasks import TaskSpec

_EPS = 1e-6


class ANFL(nn.Module):
    """AU relation graph node features and probabilities (paper 002 eqs. 1-3).

    Args:
        in_dim: width of the image feature X.
        n: number of AUs (nodes).
        d: node feature width.
        k: neighbours kept per node (itself included), clamped to n.
    """

    def __init__(self, in_dim: int, n: int, d: int, k: int):
        super().__init__()
        self.n, self.k = n, max(1, min(int(k), n))
        bound = 1.0 / math.sqrt(in_dim)
        self.w = nn.Parameter(torch.empty(n, in_dim, d).uniform_(-bound, bound))   # eq. 1, W_i
        self.b = nn.Parameter(torch.empty(n, d).uniform_(-bound, bound))
        self.u = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.bn = nn.BatchNorm1d(n)
        self.s = nn.Parameter(torch.empty(n, d).uniform_(0, 1))                    # eq. 3, s_i

    def adjacency(self, v: torch.Tensor) -> torch.Tensor:
        """kNN graph on dot products: ``A[b, i, j] = 1`` iff ``v_i . v_j`` is among the ``k``
        largest of row ``i``; ``[B, n, n]``."""
        sim = v @ v.transpose(1, 2)                                                # [B, n, n]
        thr = sim.topk(self.k, dim=-1).values[..., -1:]
        return (sim >= thr).to(v.dtype)

    def forward(self, x: torch.Tensor) -> tuple:
        """``X [B, in]`` -> ``(p [B, n] in [0, 1], node features [B, n, d])``."""
        v = torch.relu(torch.einsum("bi,nid->bnd", x, self.w) + self.b)           # eq. 1
        a = self.adjacency(v.detach())
        deg = a.sum(-1).clamp_min(1.0)                                             # [B, n]
        a_n = a / torch.sqrt(deg[:, :, None] * deg[:, None, :])
        h = torch.relu(v + self.bn(a_n @ self.u(v) + self.v(v)))                  # GCN (eq. 2)
        p = F.cosine_similarity(torch.relu(h), torch.relu(self.s)[None], dim=-1, eps=1e-8)
        return p, h                                                                # eq. 3


class MultiTaskCrossAttention(MultiTaskModel):
    """The network of paper 002 (see the module docstring).

    Args:
        spec: the tasks (binary -> ANFL; multiclass -> FER heads; regression -> VA head).
        encoder: image/vector feature extractor ``[B, ...] -> [B, enc_dim]``.
        enc_dim: its width.
        d: ANFL node feature width.
        k: kNN neighbours.
        cross_attn: AU-to-FER cross attention (eqs. 6-7).
        au_steps: training batches of the AU-only stage.
        mixup, mixup_alpha: multi-task MixUp.
    """

    family = "mtca"

    def __init__(self, spec: TaskSpec, encoder: nn.Module, enc_dim: int, d: int = 64, k: int = 4,
                 cross_attn: bool = True, au_steps: int = 0, mixup: bool = False,
                 mixup_alpha: float = 0.2):
        super().__init__(spec)
        self.encoder = encoder
        self.bin, self.mc, self.reg = (spec.indices(k_) for k_ in ("binary", "multiclass",
                                                                    "regression"))
        nb = len(self.bin)
        self.anfl = ANFL(enc_dim, nb, d, k) if nb else None
        self.fer = nn.ModuleList(nn.Linear(enc_dim, spec.tasks[j].num_classes) for j in self.mc)
        self.cross_attn = bool(cross_attn and nb and self.mc)
        if self.cross_attn:
            self.w_q = nn.ModuleList(nn.Linear(nb, spec.tasks[j].num_classes, bias=False)
                                     for j in self.mc)
            self.w_k = nn.ModuleList(nn.Linear(spec.tasks[j].num_classes,
                                               spec.tasks[j].num_classes) for j in self.mc)
        if self.reg:
            self.va = nn.Linear(enc_dim, len(self.reg))
            self.va_bn = nn.BatchNorm1d(len(self.reg))
        self.au_steps = int(au_steps)
        self.mixup, self.mixup_alpha = bool(mixup), float(mixup_alpha)
        # label counts seen in training (eqs. 9, 10)
        self.register_buffer("au_pos", torch.zeros(nb))
        self.register_buffer("au_n", torch.zeros(nb))
        self.register_buffer("ex_counts", torch.zeros(len(self.mc), max(
            [spec.tasks[j].num_classes for j in self.mc] or [1])))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._mix = None

    # ------------------------------------------------------------------ forward
    def heads(self, x: torch.Tensor) -> dict:
        """``{"au": p [B, nb], "ex": [y_EX [B, C]...], "ex_raw": [...], "va": [B, nr]}``."""
        f = self.encoder(x)                                                        # [B, F]
        out = {}
        if self.anfl is not None:
            out["au"], _ = self.anfl(f)
        raw = [h(f) for h in self.fer]                                             # eq. 5
        out["ex_raw"] = raw
        if self.cross_attn:
            q = out["au"]
            out["ex"] = [torch.tanh(wq(q) + wk(e)) * e                             # eqs. 6-7
                         for wq, wk, e in zip(self.w_q, self.w_k, raw)]
        else:
            out["ex"] = raw
        if self.reg:
            out["va"] = torch.tanh(self.va_bn(self.va(f)))                         # eq. 4
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.heads(x)
        B = len(x)
        z = torch.zeros(B, sum(self.spec.out_dims), device=x.device, dtype=torch.float32)
        offs = self.spec.offsets
        parts = []
        if self.bin:
            p = h["au"].clamp(_EPS, 1 - _EPS)
            parts.append(([offs[j] for j in self.bin], torch.log(p) - torch.log1p(-p)))
        for j, e in zip(self.mc, h["ex"]):
            parts.append((list(range(offs[j], offs[j] + e.shape[1])), e))
        if self.reg:
            parts.append(([offs[j] for j in self.reg], h["va"]))
        cols = torch.tensor([c for idx, _ in parts for c in idx], device=x.device)
        z = z.to(parts[0][1].dtype).index_copy(1, cols, torch.cat([v for _, v in parts], 1))
        return z                                                                   # [B, D]

    def forward(self, x, y=None, mask=None, generator=None) -> ModelOutput:
        self._mix = None
        if self.training and self.mixup and y is not None and len(x) > 1:
            lam = float(torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample())
            perm = torch.randperm(len(x), generator=generator).to(x.device)
            x = lam * x + (1 - lam) * x[perm]
            self._mix = (perm, lam)
        lg = self.logits(x)
        return ModelOutput(lg[:, None, :], lg.new_zeros(len(lg), 1))

    @torch.no_grad()
    def predict(self, x, L=None, generator=None) -> torch.Tensor:
        return self.activate(self.logits(x))

    def init_binary_bias(self, log_odds: torch.Tensor) -> None:
        """No output bias: the AU probabilities are cosine similarities (eq. 3)."""

    # ------------------------------------------------------------------ loss
    def au_weights(self) -> torch.Tensor:
        """eq. 9 from the counts seen: ``N (1/r_i) / sum_j 1/r_j`` ``[N]`` (mean 1); an AU with
        no positive among ``n`` labels counts as rate ``1/(n+1)``."""
        rate = self.au_pos / self.au_n.clamp_min(1.0)
        rate = torch.maximum(rate, 1.0 / (self.au_n + 1.0)).clamp_min(1e-6)
        w = 1.0 / rate
        return w / w.mean()

    def class_weights(self, i: int, C: int) -> torch.Tensor:
        """eq. 10's ``P``: 1 / class frequency among the counts seen, mean 1 ``[C]``."""
        c = self.ex_counts[i, :C]
        freq = c.clamp_min(1.0) / c.sum().clamp_min(1.0)
        w = 1.0 / freq
        return w / w.mean()

    @torch.no_grad()
    def _count(self, y: torch.Tensor, m: torch.Tensor) -> None:
        if self.bin:
            yb, mb = y[:, self.bin], m[:, self.bin]
            self.au_pos += (yb * mb).sum(0)
            self.au_n += mb.sum(0)
        for i, j in enumerate(self.mc):
            keep = m[:, j] > 0
            C = self.spec.tasks[j].num_classes
            self.ex_counts[i, :C] += torch.bincount(y[keep, j].long(), minlength=C)[:C].to(
                self.ex_counts)

    def group_losses(self, z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> dict:
        """``{group: scalar loss}`` over the present labels (eqs. 8-11)."""
        y = y.to(z)
        m = mask.to(z)
        y = torch.where(m > 0, y, torch.zeros_like(y))
        mix, self._mix = self._mix, None
        lam, y2 = 1.0, y
        if mix is not None and len(mix[0]) == len(y):
            perm, lam = mix
            y2, m = y[perm], m * m[perm]
        if self.training:
            self._count(y, m if mix is None else mask.to(z))
        offs = self.spec.offsets
        out = {}
        if self.bin:
            lg = z[:, [offs[j] for j in self.bin]]
            tgt = lam * y[:, self.bin] + (1 - lam) * y2[:, self.bin]
            mb = m[:, self.bin]
            el = wasl(lg, tgt) * self.au_weights().to(z)                          # eq. 8
            n = mb.sum(1)
            per = (el * mb).sum(1) / n.clamp_min(1.0)
            out[self.spec.tasks[self.bin[0]].group] = (per[n > 0].mean() if bool((n > 0).any())
                                                      else z.sum() * 0.0)
        for i, j in enumerate(self.mc):
            t = self.spec.tasks[j]
            u = z[:, offs[j]:offs[j] + t.num_classes]
            P = self.class_weights(i, t.num_classes).to(z)
            keep = m[:, j] > 0
            if not bool(keep.any()):
                out[t.group] = out.get(t.group, 0.0) + z.sum() * 0.0
                continue
            e1, e2 = y[keep, j].long(), y2[keep, j].long()
            ce = lam * P[e1] * F.cross_entropy(u[keep], e1, reduction="none")     # eq. 10
            if lam < 1:
                ce = ce + (1 - lam) * P[e2] * F.cross_entropy(u[keep], e2, reduction="none")
            out[t.group] = out.get(t.group, 0.0) + ce.mean()
        for j in self.reg:
            t = self.spec.tasks[j]
            tgt = lam * y[:, j] + (1 - lam) * y2[:, j]
            out[t.group] = out.get(t.group, 0.0) + ccc_loss(z[:, offs[j]], tgt, m[:, j])  # eq. 11
        return out

    def loss(self, out: ModelOutput, y, mask, weights, config) -> tuple:
        """``sum_g w_g L_g`` (or the uncertainty form); the AU loss alone during the AU stage.

        Returns ``(loss, {"nll": the weighted sum, "loss/<group>": each term, ...})``.
        """
        z = out.logits[:, 0]
        L = self.group_losses(z, y, mask)
        groups = list(self.spec.groups)
        au_only = self.training and int(self.steps) < self.au_steps and self.bin
        if self.training:
            self.steps += 1
        gw = self.group_w.to(z) if hasattr(self, "group_w") else torch.ones(len(groups))
        learned = getattr(self, "log_tau", None) is not None
        total = z.sum() * 0.0
        parts = {}
        au_group = self.spec.tasks[self.bin[0]].group if self.bin else None
        for gi, g in enumerate(groups):
            if g not in L:
                continue
            parts[f"loss/{g}"] = L[g].detach() if torch.is_tensor(L[g]) else torch.tensor(L[g])
            if au_only and g != au_group:
                continue
            term = gw[gi] * L[g]
            if learned:
                c = 1.0 if self.group_kind(g) == "multiclass" else 0.5
                term = c * term / self.log_tau[gi].exp()
            total = total + term
        parts["nll"] = total
        if learned:
            reg = 0.5 * self.log_tau.sum()
            parts["uncertainty"] = reg
            total = total + reg
        return total, parts


def _feature_encoder(config, input_shape):
    """``(module, width)``: pooled image features (timm/tiny_cnn) or the MLP on vectors."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 1:
        enc = MLPEncoder(shape[0], int(config.enc_layers), int(config.enc_width))
        return enc, enc.out_dim
    if len(shape) != 3:
        raise ConfigError(f"backbone: mtca needs image (C, H, W) or vector input, got {shape}")
    fmap, ch = conv_feature_map(config.backbone, shape, config.pretrained)
    return nn.Sequential(fmap, _Pool()), ch


class _Pool(nn.Module):
    def forward(self, x):  # [B, C, H, W] -> [B, C]; token maps [B, N, C] -> [B, C]
        return x.mean(dim=(2, 3)) if x.ndim == 4 else x.mean(dim=1)


@FAMILIES.register("mtca")
def mtca(config, spec: TaskSpec, input_shape) -> MultiTaskCrossAttention:
    """Build the cross-attention network of ``config`` (``d_model`` node width, ``knn``,
    ``cross_attn``, ``au_steps``, ``mixup``) for ``spec`` and inputs of ``input_shape``."""
    enc, dim = _feature_encoder(config, input_shape)
    m = MultiTaskCrossAttention(spec, enc, dim, int(config.d_model), int(config.knn),
                                bool(config.cross_attn), int(config.au_steps),
                                bool(config.mixup), float(config.mixup_alpha))
    m.configure_loss(config)
    return m
