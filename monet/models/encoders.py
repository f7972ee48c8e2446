"""Shared encoders f_W: an MLP for tabular input (the paper's toy encoder), a tiny CNN for CPU
demos and tests, and any timm backbone by name for face images (:mod:`monet.models.backbones`).

``mlp`` and ``tiny_cnn`` register themselves in :data:`monet.registry.ENCODERS`; every other name
goes to timm.

Example:
    >>> enc, dim = create_encoder("mlp", (2,), layers=4, width=64)
    >>> dim
    64
    >>> enc, dim = create_encoder("tiny_cnn", (1, 16, 16), width=32)
    >>> dim
    32
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from monet.errors import ConfigError
from monet.models import backbones
from monet.registry import ENCODERS


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


class TinyCNN(nn.Module):
    """Four conv (3x3, stride 2) -> BN -> ReLU blocks and a global average pool.

    Args:
        in_chans: input channels.
        width: output feature size (channels of the last block); earlier blocks have 16, 32, 64.
    """

    def __init__(self, in_chans: int = 3, width: int = 64):
        super().__init__()
        chans, blocks, c = (16, 32, 64, int(width)), [], int(in_chans)
        for co in chans:
            blocks += [nn.Conv2d(c, co, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(co),
                       nn.ReLU(inplace=True)]
            c = co
        self.features = nn.Sequential(*blocks)
        self.out_dim = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, width]
        return self.features(x).mean(dim=(2, 3))


@ENCODERS.register("mlp")
def mlp(input_shape, pretrained: Optional[str] = None, layers: int = 4, width: int = 64, **_):
    """The toy encoder: ``(MLPEncoder, width)`` for vector input ``(F,)``."""
    if len(input_shape) != 1:
        raise ConfigError(f"backbone: 'mlp' needs vector input, got input shape {tuple(input_shape)}; "
                          "use 'tiny_cnn' or a timm backbone name for images")
    enc = MLPEncoder(int(input_shape[0]), layers, width)
    if pretrained:
        backbones.load_weights(enc, pretrained, name="mlp")
    return enc, enc.out_dim


@ENCODERS.register("tiny_cnn")
def tiny_cnn(input_shape, pretrained: Optional[str] = None, width: int = 64, **_):
    """A small fast CNN encoder: ``(module, out_dim)`` with ``out_dim == width``.

    Args:
        input_shape: ``(C, H, W)``.
        pretrained: optional local weights file (state dict) for this module.
        width: output feature size (default 64). Other keywords (``layers``) are ignored.
    """
    c, _, _ = backbones.image_shape("tiny_cnn", input_shape)
    enc = TinyCNN(c, width)
    if pretrained:
        backbones.load_weights(enc, pretrained, name="tiny_cnn")
    return enc, enc.out_dim


AUTO = "auto"                         # the default backbone: resolved by the input's shape
IMAGE_DEFAULT = "inception_v3"        # MONET §4.2's face backbone


def resolve_backbone(name: str, input_shape=None) -> str:
    """``auto`` -> ``mlp`` for vector input, ``inception_v3`` (the MONET paper's) for images
    (``input_shape`` None means images); any other name is returned as it is."""
    if name != AUTO:
        return name
    return "mlp" if input_shape is not None and len(tuple(input_shape)) == 1 else IMAGE_DEFAULT


def create_encoder(name: str, input_shape, pretrained: Optional[str] = None, **kw):
    """Return ``(module, out_dim)`` for encoder ``name``: a monet encoder or a timm backbone.

    Args:
        name: ``mlp``, ``tiny_cnn``, any timm model name, or ``auto`` (see :func:`resolve_backbone`).
        input_shape: ``(F,)`` or ``(C, H, W)``.
        pretrained: local weights file (never downloaded).
        **kw: ``layers``/``width`` (monet encoders) or timm ``create_model`` keywords.
    """
    name = resolve_backbone(name, input_shape)
    if name in ENCODERS:
        return ENCODERS.get(name)(tuple(input_shape), pretrained=pretrained, **kw)
    return backbones.create_backbone(name, tuple(input_shape), pretrained=pretrained,
                                     known=ENCODERS.names(), **kw)


def conv_feature_map(name: str, input_shape, pretrained: Optional[str] = None):
    """An image backbone returning its last feature map (no final pooling):
    ``(module, channels)``, for the token models (mtt, mtca).

    ``tiny_cnn`` is the conv stack of :class:`TinyCNN`; ``auto`` is Inception-v3; any other name
    is a timm model built with ``num_classes=0, global_pool=''`` (never downloaded;
    ``pretrained`` is a local weights file, see :func:`monet.models.backbones.load_weights`).
    """
    name = resolve_backbone(name, input_shape)
    c = int(input_shape[0])
    if name == "tiny_cnn":
        net = TinyCNN(c)
        if pretrained:
            backbones.load_weights(net, pretrained, name=name)
        return net.features, net.out_dim
    timm = backbones._timm()
    if not timm.is_model(name):
        raise backbones._unknown(name, ENCODERS.names())
    try:
        net = timm.create_model(name, pretrained=False, num_classes=0, global_pool="", in_chans=c)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise ConfigError(f"backbone: timm cannot build {name!r} without pooling: {e}") from e
    if pretrained:
        backbones.load_weights(net, pretrained, name=name)
    return net, int(net.num_features)


def encoder_data_config(name: str) -> dict:
    """Input size and normalisation image encoder ``name`` expects: monet encoders take any size
    (``input_size=None``) with ImageNet mean/std; timm models (and ``auto``: Inception-v3) as
    their pretrained config says.

    Example:
        >>> encoder_data_config("tiny_cnn")["input_size"] is None
        True
    """
    name = resolve_backbone(name)
    if name in ENCODERS:
        return {"input_size": None, "mean": backbones.IMAGENET_MEAN, "std": backbones.IMAGENET_STD,
                "interpolation": "bilinear", "crop_pct": 1.0}
    return backbones.backbone_data_config(name, known=ENCODERS.names())


def encoder_from_config(config, input_shape):
    """The shared encoder f_W of ``config`` (a :class:`monet.config.TrainConfig`)."""
    return create_encoder(config.backbone, input_shape, pretrained=config.pretrained,
                          layers=config.enc_layers, width=config.enc_width)
