"""Datasets: the registry :data:`monet.registry.DATASETS` from dataset name to loader, every
loader returning a :class:`DataBundle`.

Each loader registers itself where it is defined; this package imports the built-in modules
below, so a broken dataset module fails here with its own error, never as "unknown dataset".

Example:
    >>> from monet.config import TrainConfig
    >>> b = load_dataset(TrainConfig(dataset="toy", T=3))
    >>> b.spec.T
    3
"""
from __future__ import annotations

import monet.data.affwild2  # noqa: F401  registers affwild2
import monet.data.au  # noqa: F401  registers bp4d, disfa
import monet.data.celeba  # noqa: F401  registers celeba
import monet.data.tabular  # noqa: F401  registers tabular
import monet.data.toy  # noqa: F401  registers toy
from monet.data.base import DataBundle, TensorSplit  # noqa: F401
from monet.registry import DATASETS


def list_datasets() -> list:
    """Names of the registered datasets."""
    return DATASETS.names()


def load_dataset(config) -> DataBundle:
    """Load the dataset named by ``config.dataset`` (a :class:`monet.config.TrainConfig`)."""
    return DATASETS.get(config.dataset)(config)
