"""Multi-task transformer with uncertainty modelling (paper 003, Tallec et al., ABAW4, §3).

Architecture (§3.1):

* a convolutional backbone whose final pooling is replaced by a 1x1 projection to ``d``:
  ``timm.create_model(name, pretrained=False, num_classes=0, global_pool='')`` gives the
  ``[B, C, H', W']`` feature map (``tiny_cnn``: the conv stack of
  :class:`monet.models.encoders.TinyCNN`); vector input (toy, tabular) goes through the MLP
  encoder and a linear layer that makes ``VECTOR_TOKENS`` tokens of width ``d``;
* the usual 2-D sin-cos position encoding added to the ``H' x W'`` patches (1-D for vector tokens);
* ``N_x`` self-attention layers over the patches -> the image representation ``p``;
* one learned token per task group (Aff-Wild2: AU, EX, VA; BP4D/DISFA/CelebA: one binary group);
* ``N_t`` modules, each token self-attention then token-to-patch cross-attention (a
  ``torch.nn.TransformerDecoderLayer``: self-attention, cross-attention, feed-forward, pre-norm);
* ``N_d`` dense layers per task group on its refined token (ReLU, the last linear), giving the
  group's logits ``u_a``, ``u_e`` or values ``v``.

Loss (§3.2, eqs. 1-5), per example ``i`` and task group ``g``::

    L_a = BCE(u_a, a) / (2 T_a)     BCE on the raw logits, mean over the present AUs
    L_e = CCE(u_e, e) / T_e         cross-entropy on the raw logits
    L_v = MSE(v_hat, v) / (2 s_v^2) mean over the present dimensions
    L_i = (G / n_i) * sum_{g present} w_g L_g,i      n_i: groups with a label, G: all groups

so a fully labelled example gets exactly eq. 2 (times the group weights ``w_g``, 1 by default)
and every example with at least one label weighs the same; the batch loss is the mean of
``L_i`` over the examples with a label. Missing labels (mask 0) are dropped from every mean;
their placeholder values never reach the loss. Predictions are ``sigmoid(u_a / T_a)`` and
``softmax(u_e / T_e)`` (eq. 1).

Temperatures ``T_a``, ``T_e`` and the variance ``s_v^2`` (``config.temperatures[group]``; a
regression group's entry is its variance; defaults are the paper's: binary 1, multiclass 5,
regression 1) are

* fixed (the default),
* searched (``temperature/<group>`` in ``search/spaces.py``: still fixed within a run), or
* learned with ``config.weighting = 'uncertainty'``: ``log T_g`` is a parameter (initialised at
  the configured or default value) and the loss gains Kendall et al.'s term ``1/2 log T_g`` per
  group (``log sigma`` of the Gaussian / tempered-softmax likelihood), which stops ``T_g`` from
  growing without bound.

Options: multi-task MixUp (§4.2, ``config.mixup``): in training, inputs are mixed with a shuffled
copy of the batch, ``x = lam x + (1 - lam) x[perm]``, ``lam ~ Beta(alpha, alpha)``, and every task
is supervised with the same combination of the labels (BCE/CE: ``lam L(y) + (1 - lam) L(y[perm])``;
regression: the mixed value); a mixed label is present when both are. Temporal smoothing (§4.3):
:func:`temporal_smooth` averages the logits (values for VA) of the frames of a video in a window
of ``S`` frames (missing frames ignored) before the activation; :meth:`predict_video`.

Example:
    >>> import torch
    >>> from monet.config import TrainConfig
    >>> from monet.data.affwild2 import spec
    >>> c = TrainConfig(family="mtt", backbone="tiny_cnn", d_model=32, heads=4, n_d=2)
    >>> m = mtt(c, spec(), (3, 32, 32))
    >>> out = m(torch.zeros(2, 3, 32, 32))
    >>> out.logits.shape, m.predict(torch.zeros(2, 3, 32, 32)).shape
    (torch.Size([2, 1, 22]), torch.Size([2, 22]))
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monet.errors import ConfigError
from monet.models.base import ModelOutput, MultiTaskModel
from monet.models.encoders import MLPEncoder, conv_feature_map
from monet.registry import FAMILIES
from monet.tasks import TaskSpec

VECTOR_TOKENS = 4            # tokens made from a vector input's MLP features
DEFAULT_TEMPERATURE = {"binary": 1.0, "multiclass": 5.0, "regression": 1.0}   # paper 003 §4.1


# ---------------------------------------------------------------------------------- blocks
def sincos_1d(n: int, d: int) -> torch.Tensor:
    """Sin-cos encoding of positions ``0..n-1``: ``[n, d]`` (``d`` even)."""
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
    out = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]               # [n, d/2]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(h: int, w: int, d: int) -> torch.Tensor:
    """2-D sin-cos position encoding (as MAE / ViT): half the channels encode the row, half the
    column. ``[h * w, d]``, row-major; ``d`` must be a multiple of 4."""
    if d % 4:
        raise ConfigError(f"d_model: the 2-D sin-cos encoding needs a multiple of 4, got {d}")
    rows = sincos_1d(h, d // 2)[:, None, :].expand(h, w, d // 2)
    cols = sincos_1d(w, d // 2)[None, :, :].expand(h, w, d // 2)
    return torch.cat([rows, cols], dim=-1).reshape(h * w, d)


class PatchTokens(nn.Module):
    """Input -> patch tokens ``[B, P, d]`` with their position encoding.

    Images: feature map ``[B, C, H', W']`` -> 1x1 conv to ``d`` -> ``H' W'`` tokens + 2-D sin-cos.
    Vectors: MLP encoder -> linear -> ``VECTOR_TOKENS`` tokens + 1-D sin-cos.
    """

    def __init__(self, backbone: str, input_shape, d: int, pretrained: Optional[str] = None,
                 enc_layers: int = 4, enc_width: int = 64):
        super().__init__()
        shape = tuple(int(v) for v in input_shape)
        self.d = d
        if len(shape) == 1:
            self.image = False
            self.encoder = MLPEncoder(shape[0], enc_layers, enc_width)
            self.proj = nn.Linear(self.encoder.out_dim, VECTOR_TOKENS * d)
            self.register_buffer("pos", sincos_1d(VECTOR_TOKENS, d), persistent=False)
            return
        if len(shape) != 3:
            raise ConfigError(f"backbone: mtt needs image (C, H, W) or vector input, got {shape}")
        self.image = True
        self.encoder, ch = conv_feature_map(backbone, shape, pretrained)   # no final pooling
        with torch.no_grad():
            was = self.encoder.training
            fm = self.encoder.eval()(torch.zeros(1, *shape))
            self.encoder.train(was)
        if fm.ndim == 3:        # token models (ViT): [1, N, C]
            self.proj = nn.Linear(fm.shape[-1], d)
            self.register_buffer("pos", sincos_1d(fm.shape[1], d), persistent=False)
            self.tokens_in = True
        else:
            self.proj = nn.Conv2d(ch, d, kernel_size=1)          # the 1x1 projection to d
            self.register_buffer("pos", sincos_2d(fm.shape[2], fm.shape[3], d), persistent=False)
            self.tokens_in = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.image:
            z = self.proj(self.encoder(x))                                     # [B, P*d]
            return z.view(len(x), VECTOR_TOKENS, self.d) + self.pos
        fm = self.encoder(x)
        if self.tokens_in:
            return self.proj(fm) + self.pos                                    # [B, N, d]
        z = self.proj(fm)                                                      # [B, d, H', W']
        return z.flatten(2).transpose(1, 2) + self.pos                         # [B, H'W', d]


def dense_stack(d: int, out: int, n: int) -> nn.Sequential:
    """``n`` dense layers: ``n - 1`` of width ``d`` with ReLU, then a linear one to ``out``."""
    mods = []
    for _ in range(n - 1):
        mods += [nn.Linear(d, d), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(d, out))


def temporal_smooth(outputs: torch.Tensor, videos: Sequence, frames: torch.Tensor,
                    S: int) -> torch.Tensor:
    """Mean of each frame's outputs over the frames of its video within a window of ``S`` frames
    (paper 003 §4.3): frames ``f - S // 2 .. f - S // 2 + S - 1``; missing frames are ignored.

    Args:
        outputs: ``[N, D]`` raw outputs (logits for AU/EX, values for VA).
        videos: N video ids.
        frames: ``[N]`` frame numbers.
        S: window size (``S <= 1``: no smoothing).
    Returns:
        ``[N, D]`` smoothed outputs (apply the activation afterwards).

    Example:
        >>> z = torch.tensor([[0.], [3.], [6.], [9.]])
        >>> temporal_smooth(z, ["a", "a", "a", "b"], torch.tensor([1, 2, 4, 1]), 3)[:, 0].tolist()
        [1.5, 1.5, 6.0, 9.0]
    """
    if S <= 1:
        return outputs.clone()
    frames = torch.as_tensor(frames, dtype=torch.long)
    out = torch.empty_like(outputs)
    ids = {}
    vid = torch.tensor([ids.setdefault(v, len(ids)) for v in videos])
    lo_off = S // 2
    for k in range(len(ids)):
        rows = (vid == k).nonzero(as_tuple=True)[0]
        f = frames[rows]
        f0 = int(f.min())
        n = int(f.max()) - f0 + 1
        dense = outputs.new_zeros(n + 1, outputs.shape[1])
        cnt = outputs.new_zeros(n + 1)
        dense.index_add_(0, f - f0 + 1, outputs[rows])
        cnt.index_add_(0, f - f0 + 1, torch.ones_like(f, dtype=outputs.dtype))
        cs, cc = dense.cumsum(0), cnt.cumsum(0)                         # prefix sums, [n + 1]
        a = (f - f0 - lo_off).clamp(0, n)
        b = (f - f0 - lo_off + S).clamp(0, n)
        out[rows] = (cs[b] - cs[a]) / (cc[b] - cc[a])[:, None]
    return out


def frame_number(key: str) -> int:
    """Frame number of an Aff-Wild2 image key (``video/00042.jpg`` -> 42)."""
    stem = os.path.splitext(os.path.basename(str(key)))[0]
    digits = "".join(ch for ch in stem if ch.isdigit())
    if not digits:
        raise ValueError(f"{key!r}: no frame number in the file name")
    return int(digits)


# ---------------------------------------------------------------------------------- model
class MultiTaskTransformer(MultiTaskModel):
    """The multi-task transformer of paper 003 (see the module docstring).

    Args:
        spec: the tasks; one task token per ``spec.groups`` entry.
        patches: a :class:`PatchTokens` module.
        d, n_x, n_t, n_d, heads: width, patch self-attention layers, token modules, dense layers
            per group, attention heads.
        mixup: multi-task MixUp in training; ``mixup_alpha``: its Beta parameter.
    """

    family = "mtt"

    def __init__(self, spec: TaskSpec, patches: PatchTokens, d: int = 768, n_x: int = 2,
                 n_t: int = 2, n_d: int = 4, heads: int = 12, mixup: bool = False,
                 mixup_alpha: float = 0.2):
        super().__init__(spec)
        if d % heads:
            raise ConfigError(f"d_model: {d} is not a multiple of heads = {heads}")
        self.patches, self.d = patches, d
        self.mixup, self.mixup_alpha = bool(mixup), float(mixup_alpha)
        layer = dict(d_model=d, nhead=heads, dim_feedforward=4 * d, dropout=0.0,
                     batch_first=True, norm_first=True)
        self.patch_attn = nn.ModuleList(nn.TransformerEncoderLayer(**layer) for _ in range(n_x))
        self.patch_norm = nn.LayerNorm(d)
        groups = list(spec.groups)
        self.task_tokens = nn.Parameter(torch.randn(len(groups), d) * 0.02)        # [G, d]
        self.token_blocks = nn.ModuleList(nn.TransformerDecoderLayer(**layer) for _ in range(n_t))
        self.token_norm = nn.LayerNorm(d)
        offs = spec.offsets
        idx, self.heads_out = [], nn.ModuleList()
        for g in groups:
            tasks = [j for j, t in enumerate(spec.tasks) if t.group == g]
            idx += [offs[j] + c for j in tasks for c in range(spec.tasks[j].out_dim)]
            self.heads_out.append(dense_stack(d, sum(spec.tasks[j].out_dim for j in tasks), n_d))
        # position of each canonical output in the concatenated group outputs
        self.register_buffer("out_index", torch.argsort(torch.tensor(idx)), persistent=False)
        self._mix = None

    # ------------------------------------------------------------------ temperatures
    def default_temperature(self, group: str) -> float:
        return DEFAULT_TEMPERATURE[self.group_kind(group)]

    def configure_loss(self, config) -> None:
        """Group weights, fixed temperatures (config or paper defaults) or learned ones."""
        super().configure_loss(config)
        temps = dict(getattr(config, "temperatures", None) or {})
        tau = [float(temps.get(g, self.default_temperature(g))) for g in self.spec.groups]
        self.register_buffer("tau_fixed", torch.tensor(tau), persistent=False)

    def tau(self) -> torch.Tensor:
        """``[G]`` temperatures ``T_g`` (variance for a regression group)."""
        if getattr(self, "log_tau", None) is not None:
            return self.log_tau.exp()
        if not hasattr(self, "tau_fixed"):
            return torch.tensor([self.default_temperature(g) for g in self.spec.groups])
        return self.tau_fixed

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """eq. 1: ``sigmoid(u_a / T_a)``, ``softmax(u_e / T_e)``; values as they are."""
        tau = self.tau().detach().to(logits)
        groups = list(self.spec.groups)
        out = torch.empty_like(logits)
        for t, sl in self._slices:
            if t.kind == "regression":
                out[..., sl] = logits[..., sl]
                continue
            z = logits[..., sl] / tau[groups.index(t.group)]
            out[..., sl] = torch.sigmoid(z) if t.kind == "binary" else torch.softmax(z, dim=-1)
        return out

    def init_binary_bias(self, log_odds: torch.Tensor) -> None:
        """Bias of the binary outputs <- ``log_odds * T_g`` (so that eq. 1 starts at the prior)."""
        tau = self.tau().detach()
        groups = list(self.spec.groups)
        pos = {int(c): (h, i) for h, g in enumerate(groups)
               for i, c in enumerate(self._group_outputs(g))}
        with torch.no_grad():
            for lo, j in zip(log_odds.tolist(), self.spec.indices("binary")):
                h, i = pos[self.spec.offsets[j]]
                self.heads_out[h][-1].bias[i] = lo * float(tau[h])

    def _group_outputs(self, g: str) -> list:
        return [self.spec.offsets[j] + c for j, t in enumerate(self.spec.tasks) if t.group == g
                for c in range(t.out_dim)]

    # ------------------------------------------------------------------ forward
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patches(x)                                                     # [B, P, d]
        for blk in self.patch_attn:
            p = blk(p)
        p = self.patch_norm(p)
        tok = self.task_tokens.expand(len(x), -1, -1)                           # [B, G, d]
        for blk in self.token_blocks:
            tok = blk(tok, p)                         # token self-attn, then cross-attn to p
        tok = self.token_norm(tok)
        outs = torch.cat([h(tok[:, i]) for i, h in enumerate(self.heads_out)], dim=1)
        return outs[:, self.out_index]                                          # [B, D]

    def forward(self, x, y=None, mask=None, generator=None) -> ModelOutput:
        """``ModelOutput(logits [B, 1, D], log_w [B, 1])``; MixUp of ``x`` in training."""
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

    @torch.no_grad()
    def predict_video(self, x, videos: Sequence, frames, S: int = 30) -> torch.Tensor:
        """Predictions with temporal smoothing over ``S`` frames (§4.3): ``[N, D]``."""
        return self.activate(temporal_smooth(self.logits(x), videos, frames, S))

    # ------------------------------------------------------------------ loss
    def task_losses(self, z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> tuple:
        """Element losses ``[B, T]`` before any factor (BCE, CE on raw logits; squared error)
        and the mask ``[B, T]``, with the MixUp combination of the last forward applied."""
        mix, self._mix = self._mix, None
        y = y.to(z)
        y = torch.where(mask > 0, y, torch.zeros_like(y))          # placeholders never reach a loss
        m = mask.to(z)
        if mix is not None and len(mix[0]) == len(y):
            perm, lam = mix
            return self._elements(z, y, y[perm], lam), m * m[perm]
        return self._elements(z, y, y, 1.0), m

    def _elements(self, z, y, y2, lam: float) -> torch.Tensor:
        cols = []
        for j, (t, sl) in enumerate(self._slices):
            u = z[:, sl]
            if t.kind == "binary":
                tgt = lam * y[:, j] + (1 - lam) * y2[:, j]
                el = F.binary_cross_entropy_with_logits(u[:, 0], tgt, reduction="none")
            elif t.kind == "multiclass":
                el = lam * F.cross_entropy(u, y[:, j].long(), reduction="none")
                if lam < 1:
                    el = el + (1 - lam) * F.cross_entropy(u, y2[:, j].long(), reduction="none")
            else:
                el = (u[:, 0] - (lam * y[:, j] + (1 - lam) * y2[:, j])) ** 2
            cols.append(el)
        return torch.stack(cols, dim=1)                                         # [B, T]

    def loss(self, out: ModelOutput, y, mask, weights, config) -> tuple:
        """Eqs. 1-5 with masks and per-example reweighting (see the module docstring).

        Args:
            out: this model's output; y, mask: ``[B, T]``.
            weights: ``[T]`` per-task weights from ``train.build_loss_weights`` (inverse
                frequency with ``task_weighting``); their fixed temperature factors are divided
                out, the temperatures are applied here.
            config: the TrainConfig.
        Returns:
            ``(loss, {"nll": data term, "loss/<group>": mean group loss, "uncertainty": log
            term})``.
        """
        from monet.losses import temperature_weights

        z = out.logits[:, 0]                                                    # [B, D]
        el, m = self.task_losses(z, y, mask)                                    # [B, T]
        w = weights.to(z)
        temps = getattr(config, "temperatures", None) or {}
        if temps:
            w = w / temperature_weights(self.spec, temps).to(z)
        groups = list(self.spec.groups)
        tau = self.tau().to(z)                                                  # [G]
        gw = self.group_w.to(z) if hasattr(self, "group_w") else torch.ones_like(tau)
        half = {"binary": 0.5, "multiclass": 1.0, "regression": 0.5}
        G = len(groups)
        per_group, present = [], []
        parts = {}
        for gi, g in enumerate(groups):
            cols = [j for j, t in enumerate(self.spec.tasks) if t.group == g]
            fac = torch.tensor([half[self.spec.tasks[j].kind] for j in cols], device=z.device)
            mg = m[:, cols]                                                     # [B, n_g]
            n = mg.sum(1)
            s = (el[:, cols] * mg * w[cols] * fac).sum(1) / n.clamp_min(1.0)    # mean over present
            lg = gw[gi] * s / tau[gi]                                           # [B]
            per_group.append(lg)
            present.append((n > 0).to(z))
            if bool((n > 0).any()):
                parts[f"loss/{g}"] = (s / tau[gi])[n > 0].mean().detach()
        Lg, P = torch.stack(per_group, 1), torch.stack(present, 1)              # [B, G]
        n_i = P.sum(1)
        keep = n_i > 0
        per_ex = (G / n_i.clamp_min(1.0)) * (Lg * P).sum(1)                     # [B]
        nll = per_ex[keep].mean() if bool(keep.any()) else z.sum() * 0.0
        parts["nll"] = nll
        loss = nll
        if getattr(self, "log_tau", None) is not None:
            reg = 0.5 * self.log_tau.sum()                                      # Kendall: log sigma
            parts["uncertainty"] = reg
            loss = loss + reg
        return loss, parts


# ---------------------------------------------------------------------------------- factory
@FAMILIES.register("mtt")
def mtt(config, spec: TaskSpec, input_shape) -> MultiTaskTransformer:
    """Build the multi-task transformer of ``config`` (``d_model``, ``n_x``, ``n_t``, ``n_d``,
    ``heads``, ``backbone``, ``mixup``) for ``spec`` and inputs of ``input_shape``."""
    d = int(config.d_model)
    if len(tuple(input_shape)) == 3 and d % 4:
        raise ConfigError(f"d_model: {d} is not a multiple of 4 (2-D sin-cos position encoding)")
    if d % 2:
        raise ConfigError(f"d_model: {d} is not even (sin-cos position encoding)")
    patches = PatchTokens(config.backbone, input_shape, d, config.pretrained,
                          int(config.enc_layers), int(config.enc_width))
    m = MultiTaskTransformer(spec, patches, d, int(config.n_x), int(config.n_t), int(config.n_d),
                             int(config.heads), bool(config.mixup), float(config.mixup_alpha))
    m.configure_loss(config)
    return m
