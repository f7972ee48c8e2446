"""Model families: a registry and one ``create_model``.

Families: ``vmnc``, ``vmns`` (vanilla multi-task networks), ``mrnn`` (one shared GRU cell, a
seeded random order), ``monet`` (task-wise GRU cells, learned order selection) and ``oracle``
(MONET with M = 1 and a given order, the identity by default).

Example:
    >>> from monet.config import TrainConfig
    >>> from monet.tasks import TaskSpec
    >>> m = create_model(TrainConfig(family="monet", M=6, k=4), TaskSpec.binary("abc"), (2,))
    >>> type(m).__name__, m.M, m.k
    ('MultiOrderNet', 6, 4)
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

from monet.errors import ConfigError
from monet.models.base import ModelOutput, MultiTaskModel  # noqa: F401
from monet.models.encoders import create_encoder
from monet.registry import FAMILIES
from monet.tasks import TaskSpec

_FAMILIES: Dict[str, Callable] = {}


def register_family(name: str):
    """Decorator: register ``fn(config, spec, encoder, enc_dim) -> MultiTaskModel``."""
    def deco(fn):
        _FAMILIES[name] = fn
        return fn
    return deco


def list_families() -> list:
    return sorted(set(_FAMILIES) | set(FAMILIES.names()))


def _order_from_config(c, T):
    if c.order is None:
        return None
    order = [int(v) for v in c.order]
    if sorted(order) != list(range(T)):
        raise ConfigError(f"order: expected a permutation of 0..{T - 1}, got {c.order}")
    return torch.tensor([order])


def _chain(spec) -> int:
    """Length of the ordered chain of the sequential families: the binary tasks."""
    return len(spec.indices("binary"))


@register_family("vmnc")
def _vmnc(c, spec, enc, dim):
    from monet.models.vmn import VMN
    return VMN(enc, dim, spec, separate=False, head_width=c.head_width, dropout=c.dropout)


@register_family("vmns")
def _vmns(c, spec, enc, dim):
    from monet.models.vmn import VMN
    return VMN(enc, dim, spec, separate=True, head_width=c.head_width, dropout=c.dropout)


@register_family("monet")
def _monet(c, spec, enc, dim):
    from monet.models.monet import MultiOrderNet
    return MultiOrderNet(enc, dim, spec, hidden=c.hidden, M=c.M, k=c.k, feedback=c.feedback,
                         feedback_embed=c.feedback_embed,
                         orders=_order_from_config(c, _chain(spec)),
                         L=c.L, seed=c.seed)


@register_family("oracle")
def _oracle(c, spec, enc, dim):
    from monet.models.monet import MultiOrderNet
    orders = _order_from_config(c, _chain(spec))
    if orders is None:
        orders = torch.arange(_chain(spec))[None]
    return MultiOrderNet(enc, dim, spec, hidden=c.hidden, orders=orders,
                         feedback=c.feedback, feedback_embed=c.feedback_embed, L=c.L, seed=c.seed)


@register_family("mrnn")
def _mrnn(c, spec, enc, dim):
    from monet.models.monet import MultiOrderNet, random_orders
    orders = _order_from_config(c, _chain(spec))
    if orders is None:
        orders = random_orders(_chain(spec), 1, c.seed)
    m = MultiOrderNet(enc, dim, spec, hidden=c.hidden, orders=orders, shared_cell=True,
                      feedback=c.feedback, feedback_embed=c.feedback_embed, L=c.L, seed=c.seed)
    m.family = "mrnn"
    return m


def create_model(config, spec: TaskSpec, input_shape) -> MultiTaskModel:
    """Build the model of ``config.family`` for ``spec`` and inputs of ``input_shape``.

    Weights are initialised from ``config.seed``.
    """
    if config.family not in _FAMILIES and config.family not in FAMILIES:
        raise ConfigError(f"family: unknown model family {config.family!r}; "
                          f"expected one of {list_families()}")
    torch.manual_seed(int(config.seed))
    if config.family in FAMILIES:
        model = FAMILIES.get(config.family)(config, spec, input_shape)
    else:
        enc, dim = create_encoder(config.backbone, input_shape, pretrained=config.pretrained,
                                  layers=config.enc_layers, width=config.enc_width)
        model = _FAMILIES[config.family](config, spec, enc, dim)
    model.family = config.family
    if config.temperatures:
        model.set_temperatures(config.temperatures)
    model.configure_loss(config)
    return model


import monet.models.mtt  # noqa: E402,F401  registers mtt
import monet.models.mtca  # noqa: E402,F401  registers mtca
