"""A generic multi-label binary dataset from a CSV or an .npz file.

CSV: named feature columns, named 0/1 label columns and an optional ``split`` column
(``train``/``val``/``test``). When the label columns are not named, every column other than
``split`` whose values are all 0/1 is a label and the rest are features. Without a split column
the rows are split at random (seeded) in the toy's 2:1:1 proportions.

NPZ: arrays ``x`` ``[N, F]`` and ``y`` ``[N, T]`` (0/1), optional ``split`` (strings) and
``feature_names`` / ``label_names``.

Example:
    >>> # python -m monet.data.toy --T 3 --export toy.csv; then
    >>> # load_tabular("toy.csv").spec.names == ('task1', 'task2', 'task3')
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from monet.data.base import DataBundle, TensorSplit
from monet.errors import ConfigError, DataError
from monet.registry import DATASETS
from monet.tasks import TaskSpec

SPLITS = ("train", "val", "test")


def _random_split(n: int, seed: int) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=object)
    a, b = n // 2, n // 2 + n // 4
    out[perm[:a]], out[perm[a:b]], out[perm[b:]] = "train", "val", "test"
    return out


def load_tabular(path, label_columns: Optional[Sequence[str]] = None,
                 feature_columns: Optional[Sequence[str]] = None, seed: int = 0) -> DataBundle:
    """Read a CSV or .npz multi-label dataset (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a .csv or .npz dataset)")
    if path.suffix == ".npz":
        z = np.load(path, allow_pickle=False)
        for k in ("x", "y"):
            if k not in z:
                raise DataError(f"{path}: missing array {k!r} (expected x [N, F] and y [N, T])")
        x, y = np.asarray(z["x"], dtype=np.float64), np.asarray(z["y"])
        if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
            raise DataError(f"{path}: expected x [N, F] and y [N, T] with the same N, "
                            f"got {x.shape} and {y.shape}")
        labels = [str(s) for s in z["label_names"]] if "label_names" in z else \
            [f"task{t + 1}" for t in range(y.shape[1])]
        split = np.asarray(z["split"]).astype(str) if "split" in z else None
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise DataError(f"{path}: y[{r}, {c}] = {y[r, c]}; labels must be 0 or 1")
    else:
        import pandas as pd

        try:
            df = pd.read_csv(path)
        except Exception as e:  # noqa: BLE001 - pandas raises many kinds
            raise DataError(f"{path}: not a readable CSV ({e})") from None
        has_split = "split" in df.columns
        cols = [c for c in df.columns if c != "split"]
        if label_columns is None:
            label_columns = [c for c in cols
                             if pd.api.types.is_numeric_dtype(df[c]) and df[c].isin([0, 1]).all()]
        missing = [c for c in list(label_columns) + list(feature_columns or []) if c not in df]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; columns are {list(df.columns)}")
        if feature_columns is None:
            feature_columns = [c for c in cols if c not in label_columns]
        if not label_columns:
            raise DataError(f"{path}: no label columns (expected columns of 0/1 values)")
        if not feature_columns:
            raise DataError(f"{path}: no feature columns")
        for c in label_columns:
            bad = ~df[c].isin([0, 1])
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(f"{path}: line {i + 2}, column {c!r}: value {df[c].iloc[i]}; "
                                f"labels must be 0 or 1")
        for c in feature_columns:
            if not pd.api.types.is_numeric_dtype(df[c]):
                raise DataError(f"{path}: feature column {c!r} is not numeric")
        x = df[list(feature_columns)].to_numpy(dtype=np.float64)
        y = df[list(label_columns)].to_numpy()
        labels = list(label_columns)
        split = df["split"].astype(str).to_numpy() if has_split else None
    if split is None:
        split = _random_split(len(y), seed)
    else:
        bad = ~np.isin(split, SPLITS)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: row {i + 1}: split {split[i]!r}; expected one of {SPLITS}")
    parts = {}
    for s in SPLITS:
        m = split == s
        if not m.any():
            raise DataError(f"{path}: split {s!r} is empty")
        parts[s] = TensorSplit(torch.tensor(x[m], dtype=torch.float32),
                               torch.tensor(y[m].astype(np.float32)))
    return DataBundle(name="tabular", spec=TaskSpec.binary(labels), input_shape=(x.shape[1],),
                      meta=dict(path=str(path)), **parts)


@DATASETS.register("tabular")
def load_tabular_config(config) -> DataBundle:
    """``config.data_root`` (a .csv or .npz file) as a DataBundle; random splits from ``data_seed``."""
    if not config.data_root:
        raise ConfigError("data_root: the tabular dataset needs --data-root FILE.csv|FILE.npz")
    return load_tabular(config.data_root, seed=config.data_seed if config.data_seed is not None else 0)
