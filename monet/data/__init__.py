"""Datasets: a registry from dataset name to loader, all returning a :class:`DataBundle`.

Example:
    >>> from monet.config import TrainConfig
    >>> b = load_dataset(TrainConfig(dataset="toy", T=3))
    >>> b.spec.T
    3
"""
from __future__ import annotations

from typing import Callable, Dict

from monet.data.base import DataBundle, TensorSplit  # noqa: F401
from monet.errors import ConfigError

_LOADERS: Dict[str, Callable] = {}


def register_dataset(name: str):
    """Decorator: register ``fn(config) -> DataBundle`` under ``name``."""
    def deco(fn):
        _LOADERS[name] = fn
        return fn
    return deco


def list_datasets() -> list:
    _ensure_builtin()
    return sorted(_LOADERS)


def load_dataset(config) -> DataBundle:
    """Load the dataset named by ``config.dataset`` (a :class:`monet.config.TrainConfig`)."""
    _ensure_builtin()
    if config.dataset not in _LOADERS:
        raise ConfigError(f"dataset: unknown dataset {config.dataset!r}; "
                          f"expected one of {sorted(_LOADERS)}")
    return _LOADERS[config.dataset](config)


def _ensure_builtin():
    if "toy" in _LOADERS:
        return

    @register_dataset("toy")
    def _toy(c):
        from monet.data.toy import make_toy
        ds = c.data_seed if c.data_seed is not None else c.seed
        return make_toy(c.T, c.reading, ds, c.n_train, c.n_val, c.n_test)

    @register_dataset("tabular")
    def _tabular(c):
        from monet.data.tabular import load_tabular
        if not c.data_root:
            raise ConfigError("data_root: the tabular dataset needs --data-root FILE.csv|FILE.npz")
        return load_tabular(c.data_root, seed=c.data_seed if c.data_seed is not None else 0)

    try:  # face datasets (added by the face-data module when present)
        from monet.data import faces  # noqa: F401
        faces.register(register_dataset)
    except ImportError:
        pass
