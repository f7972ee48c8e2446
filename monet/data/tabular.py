"""A generic multi-label binary dataset from a CSV or an .npz file, checked value by value.

CSV (comma-separated, one header line): feature columns, 0/1 label columns and an optional
``split`` column (``train``/``val``/``test``). Which columns are labels, in this order:

1. ``label_columns`` when given (``feature_columns`` likewise);
2. else the columns whose header is marked ``label:NAME`` (the task is called ``NAME``), when
   any is marked; the unmarked ones are features;
3. else (an unmarked header, e.g. what ``python -m monet.data.toy --export`` writes) features
   come first and labels last: the labels are the columns from the first column holding only
   0/1 onwards. A column after it holding anything else, or an integer column before it that
   holds 0/1 on almost every line (>= 90%) but not on all, is an error naming the line and the
   column: a label with a bad value never silently becomes a feature. ``bundle.meta`` records
   ``features`` and ``labels``.

Every value is checked at load, and every problem is one :class:`DataError` line naming the
file, the line and the column: a feature that is empty, not a number, NaN or infinite; a label
other than 0/1; a row with more or fewer fields than the header; a file that is not
comma-separated (one column whose header holds ``;``, tabs or ``|``); a header with no data rows;
binary data; an empty or duplicate column name.

NPZ: arrays ``x`` ``[N, F]`` (finite numbers) and ``y`` ``[N, T]`` (0/1), optional ``split``
(strings) and ``label_names``. A file that is not a readable .npz archive, or that holds object
(pickled) arrays, is one line too. Without a split column / array the rows are split at random
(seeded) in the toy's 2:1:1 proportions.

Example:
    >>> import tempfile, os
    >>> f = os.path.join(tempfile.mkdtemp(), "d.csv")
    >>> _ = open(f, "w").write("x1,task1,task2\\n" + "0.5,1,0\\n0.1,0,2\\n" * 4)
    >>> load_tabular(f)
    Traceback (most recent call last):
    ...
    monet.errors.DataError: ...d.csv: line 3, column 'task2': value 2; labels must be 0 or 1 (...)
"""
from __future__ import annotations

import csv
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from monet.data.base import DataBundle, TensorSplit
from monet.errors import ConfigError, DataError
from monet.registry import DATASETS
from monet.tasks import TaskSpec

SPLITS = ("train", "val", "test")
LABEL_MARK = "label:"
NEAR_LABEL_SHARE = 0.9   # an integer column this 0/1 (but not all) before the labels: an error
_DELIMITERS = {";": "semicolon", "\t": "tab", "|": "pipe"}


def _random_split(n: int, seed: int) -> np.ndarray:
    perm = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=object)
    a, b = n // 2, n // 2 + n // 4
    out[perm[:a]], out[perm[a:b]], out[perm[b:]] = "train", "val", "test"
    return out


def load_tabular(path, label_columns: Optional[Sequence[str]] = None,
                 feature_columns: Optional[Sequence[str]] = None, seed: int = 0) -> DataBundle:
    """Read a CSV or .npz multi-label dataset (see the module docstring); checks every value."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder; expected a .csv or .npz dataset file")
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a .csv or .npz dataset)")
    if path.suffix.lower() == ".npz":
        x, y, labels, features, split = _read_npz(path)
    else:
        x, y, labels, features, split = _read_csv(path, label_columns, feature_columns)
    if split is None:
        split = _random_split(len(y), seed)
    parts = {}
    for s in SPLITS:
        m = split == s
        if not m.any():
            raise DataError(f"{path}: split {s!r} is empty (no row has split = {s})")
        parts[s] = TensorSplit(torch.tensor(x[m], dtype=torch.float32),
                               torch.tensor(y[m].astype(np.float32)))
    return DataBundle(name="tabular", spec=TaskSpec.binary(labels), input_shape=(x.shape[1],),
                      meta=dict(path=str(path), features=list(features), labels=list(labels)),
                      **parts)


# ---------------------------------------------------------------------------------- CSV
def _text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{path}: binary data (byte {nul}), not a CSV text file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); expected a CSV file") from None


def _read_csv(path: Path, label_columns, feature_columns) -> tuple:
    lines = _text(path).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise DataError(f"{path}: empty file; expected a header line and data rows")
    header = next(csv.reader([lines[0]]))
    header = [h.strip() for h in header]
    if len(header) == 1:
        for d, name in _DELIMITERS.items():
            if d in lines[0]:
                raise DataError(f"{path}: line 1: one column {lines[0][:60]!r}; the file looks "
                                f"{name}-separated, expected comma-separated values")
        raise DataError(f"{path}: line 1: one column {header[0]!r}; expected comma-separated "
                        f"feature and label columns")
    for j, h in enumerate(header):
        if not h:
            raise DataError(f"{path}: line 1, column {j + 1}: empty column name")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}: line 1: column {dup[0]!r} appears twice")
    ncol = len(header)
    cols = [[] for _ in range(ncol)]
    line_no = []
    for i, row in enumerate(csv.reader(lines[1:]), start=2):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != ncol:
            raise DataError(f"{path}: line {i}: {len(row)} fields; the header has {ncol} "
                            f"({', '.join(header[:6])}{', ...' if ncol > 6 else ''})")
        for c, v in zip(cols, row):
            c.append(v.strip())
        line_no.append(i)
    if not line_no:
        raise DataError(f"{path}: header only, no data rows")
    line_no = np.asarray(line_no)

    def where(j, r) -> str:
        return f"{path}: line {line_no[r]}, column {header[j]!r}"

    split = None
    if "split" in header:
        split = np.asarray(cols[header.index("split")], dtype=object)
        bad = ~np.isin(split, SPLITS)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where(header.index('split'), r)}: split {split[r]!r}; expected "
                            f"one of {SPLITS}")
    data_cols = [j for j, h in enumerate(header) if h != "split"]
    values = {j: _numbers(cols[j]) for j in data_cols}         # float array or None (text)
    names = {j: header[j][len(LABEL_MARK):].strip() if header[j].startswith(LABEL_MARK)
             else header[j] for j in data_cols}
    idx = {h: j for j, h in enumerate(header)}
    idx.update({names[j]: j for j in data_cols})

    def is01(j) -> bool:
        v = values[j]
        return v is not None and bool(np.isin(v, (0.0, 1.0)).all())

    rule = ""
    if label_columns is not None or feature_columns is not None:
        missing = [c for c in list(label_columns or []) + list(feature_columns or [])
                   if c not in idx]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; columns are {header}")
        if label_columns is not None:
            lab = [idx[c] for c in label_columns]
        else:
            lab = [j for j in data_cols if j not in {idx[c] for c in feature_columns} and is01(j)]
        feat = [idx[c] for c in feature_columns] if feature_columns is not None else \
            [j for j in data_cols if j not in lab]
    elif any(header[j].startswith(LABEL_MARK) for j in data_cols):
        lab = [j for j in data_cols if header[j].startswith(LABEL_MARK)]
        feat = [j for j in data_cols if j not in lab]
        rule = f" (the columns marked {LABEL_MARK}NAME are labels)"
    else:
        first = next((j for j in data_cols if is01(j)), None)
        if first is None:
            near = _near_label(values, data_cols)
            if near:
                j, r = near
                raise DataError(f"{where(j, r)}: value {cols[j][r]} in a column of 0/1 values; "
                                f"labels must be 0 or 1 (if {header[j]!r} is a feature, mark the "
                                f"label columns {LABEL_MARK}NAME in the header)")
            raise DataError(f"{path}: no label columns (no column holds only 0/1 values; mark "
                            f"label columns {LABEL_MARK}NAME in the header)")
        lab = [j for j in data_cols if j >= first]
        feat = [j for j in data_cols if j < first]
        rule = (f" (an unmarked header: features first, then labels from {header[first]!r}, the "
                f"first 0/1 column, on; mark label columns {LABEL_MARK}NAME to choose)")
        near = _near_label(values, feat)
        if near:
            j, r = near
            raise DataError(f"{where(j, r)}: value {cols[j][r]} in a column of 0/1 values; "
                            f"labels must be 0 or 1 (if {header[j]!r} is a feature, mark the "
                            f"label columns {LABEL_MARK}NAME in the header)")
    if not lab:
        raise DataError(f"{path}: no label columns (expected columns of 0/1 values)")
    if not feat:
        raise DataError(f"{path}: no feature columns (every column holds only 0/1 values; mark "
                        f"label columns {LABEL_MARK}NAME in the header)")
    for j in lab:
        v = values[j]
        bad = np.ones(len(line_no), bool) if v is None else ~np.isin(v, (0.0, 1.0))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where(j, r)}: value {cols[j][r] or '(empty)'}; labels must be 0 "
                            f"or 1{rule}")
    for j in feat:
        v = values[j]
        if v is None:
            r = _first_text(cols[j])
            raise DataError(f"{where(j, r)}: value {cols[j][r] or '(empty)'!s}; features must "
                            f"be numbers")
        bad = ~np.isfinite(v)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where(j, r)}: value {cols[j][r]}; features must be finite "
                            f"numbers (no NaN or inf)")
    x = np.stack([values[j] for j in feat], axis=1)
    y = np.stack([values[j] for j in lab], axis=1)
    return x, y, [names[j] for j in lab], [names[j] for j in feat], split


def _numbers(col: list) -> Optional[np.ndarray]:
    """The column as float64, or None when a value is not a number (empty text included)."""
    try:
        return np.asarray(col, dtype=object).astype(np.float64)
    except (ValueError, TypeError):
        return None


def _first_text(col: list) -> int:
    for r, v in enumerate(col):
        try:
            float(v)
        except ValueError:
            return r
    return 0  # pragma: no cover


def _near_label(values: dict, cols: list):
    """``(column, row)`` of the first non-0/1 value of an integer column that holds 0/1 on at
    least NEAR_LABEL_SHARE of its lines but not on all (a label column with a bad value)."""
    for j in cols:
        v = values[j]
        if v is None or not np.isfinite(v).all() or (v != np.round(v)).any():
            continue
        ok = np.isin(v, (0.0, 1.0))
        if not ok.all() and ok.mean() >= NEAR_LABEL_SHARE:
            return j, int(np.flatnonzero(~ok)[0])
    return None


# ---------------------------------------------------------------------------------- NPZ
def _read_npz(path: Path) -> tuple:
    def array(z, k):
        try:
            return np.asarray(z[k])
        except ValueError as e:
            if "allow_pickle" in str(e) or "Object arrays" in str(e):
                raise DataError(f"{path}: array {k!r} holds Python objects (a pickled object "
                                f"array); expected a numeric array (e.g. save y.astype(int))") \
                    from None
            raise DataError(f"{path}: array {k!r} cannot be read ({e})") from None
        except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"{path}: array {k!r} cannot be read ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:80]}); the archive is damaged") from None

    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        why = "not a zip archive" if "pickle" in str(e) else " ".join(str(e).split())[:80]
        raise DataError(f"{path}: not a readable .npz archive ({why}); expected arrays x [N, F] "
                        f"and y [N, T] saved with numpy.savez") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: one .npy array, not an .npz archive; expected arrays x [N, F] "
                        f"and y [N, T] saved with numpy.savez")
    with z:
        for k in ("x", "y"):
            if k not in z.files:
                raise DataError(f"{path}: missing array {k!r} (has {z.files}; expected x [N, F] "
                                f"and y [N, T])")
        x, y = array(z, "x"), array(z, "y")
        names = array(z, "label_names") if "label_names" in z.files else None
        split = array(z, "split") if "split" in z.files else None
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: x has dtype {x.dtype}; expected numbers")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{path}: y has dtype {y.dtype}; expected 0/1 numbers")
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise DataError(f"{path}: expected x [N, F] and y [N, T] with the same N, "
                        f"got {x.shape} and {y.shape}")
    if len(y) == 0 or x.shape[1] == 0 or y.shape[1] == 0:
        raise DataError(f"{path}: empty arrays x {x.shape}, y {y.shape}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{path}: x[{r}, {c}] = {x[r, c]}; features must be finite numbers")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{path}: y[{r}, {c}] = {y[r, c]}; labels must be 0 or 1")
    if names is not None:
        if names.ndim != 1 or len(names) != y.shape[1]:
            raise DataError(f"{path}: label_names has shape {names.shape}; expected "
                            f"({y.shape[1]},), one name per column of y")
        labels = [str(s) for s in names]
    else:
        labels = [f"task{t + 1}" for t in range(y.shape[1])]
    if split is not None:
        split = split.astype(str)
        if split.shape != (len(y),):
            raise DataError(f"{path}: split has shape {split.shape}; expected ({len(y)},)")
        bad = ~np.isin(split, SPLITS)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: split[{i}] = {split[i]!r}; expected one of {SPLITS}")
    return x, y, labels, [f"x{j + 1}" for j in range(x.shape[1])], split


@DATASETS.register("tabular")
def load_tabular_config(config) -> DataBundle:
    """``config.data_root`` (a .csv or .npz file) as a DataBundle; random splits from ``data_seed``."""
    if not config.data_root:
        raise ConfigError("data_root: the tabular dataset needs --data-root FILE.csv|FILE.npz")
    return load_tabular(config.data_root, seed=config.data_seed if config.data_seed is not None else 0)
