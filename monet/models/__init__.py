"""Model families: the registry :data:`monet.registry.FAMILIES` and one ``create_model``.

Families: ``vmnc``, ``vmns`` (vanilla multi-task networks, :mod:`monet.models.vmn`), ``mrnn``
(one shared GRU cell, a seeded random order), ``monet`` (task-wise GRU cells, learned order
selection) and ``oracle`` (MONET with M = 1 and a given order, the identity by default), all in
:mod:`monet.models.monet`; ``mtt`` (the multi-task transformer of paper 003,
:mod:`monet.models.mtt`) and ``mtca`` (the cross-attention AU-graph network of paper 002,
:mod:`monet.models.mtca`). Each family registers its builder
``fn(config, spec, input_shape) -> MultiTaskModel`` where it is defined; this package imports the
built-in modules below, so a broken model module fails here, loudly.

Example:
    >>> from monet.config import TrainConfig
    >>> from monet.tasks import TaskSpec
    >>> m = create_model(TrainConfig(family="monet", M=6, k=4), TaskSpec.binary("abc"), (2,))
    >>> type(m).__name__, m.family, m.M, m.k
    ('MultiOrderNet', 'monet', 6, 4)
"""
from __future__ import annotations

import torch

import monet.models.monet  # noqa: F401  registers monet, oracle, mrnn
import monet.models.mtca  # noqa: F401  registers mtca
import monet.models.mtt  # noqa: F401  registers mtt
import monet.models.vmn  # noqa: F401  registers vmnc, vmns
from monet.models.base import ModelOutput, MultiTaskModel  # noqa: F401
from monet.registry import FAMILIES
from monet.tasks import TaskSpec


def list_families() -> list:
    """Names of the registered model families."""
    return FAMILIES.names()


def create_model(config, spec: TaskSpec, input_shape) -> MultiTaskModel:
    """Build the model of ``config.family`` for ``spec`` and inputs of ``input_shape``.

    Weights are initialised from ``config.seed``.
    """
    build = FAMILIES.get(config.family)
    torch.manual_seed(int(config.seed))
    model = build(config, spec, input_shape)
    model.family = config.family
    if config.temperatures:
        model.set_temperatures(config.temperatures)
    model.configure_loss(config)
    return model
