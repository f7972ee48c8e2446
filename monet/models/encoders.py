"""Shared encoders f_W: an MLP for tabular input (the paper's toy encoder), a tiny CNN for
CPU demos and tests, and any timm backbone by name for face images.

Example:
    >>> enc, dim = create_encoder("mlp", (2,), layers=4, width=64)
    >>> dim
    64
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

from torch import nn

from monet.errors import ConfigError

_ENCODERS: Dict[str, Callable] = {}


def register_encoder(name: str):
    def deco(fn):
        _ENCODERS[name] = fn
        return fn
    return deco


class MLPEncoder(nn.Module):
    """``layers`` dense layers of ``width`` units with ReLU (MONET §4.2 toy encoder)."""

    def __init__(self, in_dim: int, layers: int = 4, width: int = 64):
        super().__init__()
        mods, d = [], in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, width), nn.ReLU()]
            d = width
        self.net = nn.Sequential(*mods)
        self.out_dim = d

    def forward(self, x):  # [B, F] -> [B, width]
        return self.net(x.flatten(1))


@register_encoder("mlp")
def _mlp(input_shape, layers=4, width=64, **_):
    if len(input_shape) != 1:
        raise ConfigError(f"backbone: 'mlp' needs vector input, got input shape {tuple(input_shape)}; "
                          "use 'tiny_cnn' or a timm backbone name for images")
    enc = MLPEncoder(int(input_shape[0]), layers, width)
    return enc, enc.out_dim


def create_encoder(name: str, input_shape, pretrained: Optional[str] = None, **kw):
    """Return ``(module, out_dim)`` for encoder ``name``.

    Unknown names are looked up in timm when the input is an image (see ``monet.models.backbones``).
    """
    if name in _ENCODERS:
        return _ENCODERS[name](tuple(input_shape), pretrained=pretrained, **kw)
    try:
        from monet.models import backbones
    except ImportError:
        backbones = None
    if backbones is not None:
        return backbones.create_backbone(name, tuple(input_shape), pretrained=pretrained, **kw)
    raise ConfigError(f"backbone: unknown encoder {name!r}; expected one of {sorted(_ENCODERS)}")


from monet.models import backbones as _backbones  # noqa: E402,F401  registers tiny_cnn
