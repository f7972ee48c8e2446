"""The toy dataset of MONET §4.1 (eq. 28), in both readings of DESIGN.md §1.

X ~ U([-1, 1]^2); x2 is noise. Task t (1-based) is a binary digit of (x1 + 1) / 2:

* ``bits`` (default, the paper's text): digit t, ``y_t = floor(2**t * (x1 + 1) / 2) mod 2``.
  Given tasks 1..t, task t+1 is a single boundary, so the identity order is the easy one.
* ``printed`` (eq. 28 as printed): digit t + 1, so task 1 already has three boundaries.

Example:
    >>> b = make_toy(T=3, seed=0)
    >>> b.spec.names, len(b.train), len(b.val), len(b.test)
    (('task1', 'task2', 'task3'), 500, 250, 250)

CLI: ``python -m monet.data.toy --T 5 --export toy.csv`` writes features, labels and split.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from monet.data.base import DataBundle, TensorSplit
from monet.errors import ConfigError
from monet.registry import DATASETS
from monet.tasks import TaskSpec

READINGS = ("bits", "printed")
MAX_T = 10
MAX_ROWS = 10 ** 7


def toy_labels(x1: np.ndarray, T: int, reading: str = "bits") -> np.ndarray:
    """Labels ``[N, T]`` (int 0/1) of the toy dataset for first coordinates ``x1`` in [-1, 1]."""
    if reading not in READINGS:
        raise ConfigError(f"reading: expected one of {READINGS}, got {reading!r}")
    shift = 0 if reading == "bits" else 1
    u = (np.asarray(x1, dtype=np.float64) + 1.0) / 2.0  # in [0, 1]
    u = np.clip(u, 0.0, 1.0 - 1e-12)
    t = np.arange(1, T + 1) + shift
    return (np.floor(u[:, None] * (2.0 ** t)[None, :]).astype(np.int64) % 2)


def make_toy(T: int = 5, reading: str = "bits", seed: int = 0, n_train: int = 500,
             n_val: int = 250, n_test: int = 250) -> DataBundle:
    """Draw the toy dataset (seeded) and return a :class:`DataBundle`."""
    if not isinstance(T, (int, np.integer)) or not 1 <= T <= MAX_T:
        raise ConfigError(f"T: expected an integer from 1 to {MAX_T}, got {T!r}")
    for n, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_ROWS:
            raise ConfigError(f"{n}: expected a size from 1 to {MAX_ROWS}, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or \
            not 0 <= seed <= 2 ** 32 - 1:
        raise ConfigError(f"seed: expected an integer from 0 to {2 ** 32 - 1}, got {seed!r}")
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    x = rng.uniform(-1.0, 1.0, size=(n, 2))
    y = toy_labels(x[:, 0], T, reading)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    a, b = n_train, n_train + n_val
    spec = TaskSpec.binary([f"task{t}" for t in range(1, T + 1)])
    return DataBundle(
        name="toy", spec=spec,
        train=TensorSplit(xt[:a], yt[:a]), val=TensorSplit(xt[a:b], yt[a:b]),
        test=TensorSplit(xt[b:], yt[b:]), input_shape=(2,),
        meta=dict(T=int(T), reading=reading, seed=int(seed), sizes=[n_train, n_val, n_test]))


def to_frame(bundle: DataBundle):
    """The bundle as a pandas DataFrame: feature columns, label columns and ``split``."""
    import pandas as pd

    frames = []
    for split in ("train", "val", "test"):
        s = getattr(bundle, split)
        df = pd.DataFrame(s.x.numpy().astype(np.float64), columns=["x1", "x2"])
        for j, name in enumerate(bundle.spec.names):
            df[name] = s.y[:, j].numpy().astype(np.int64)
        df["split"] = split
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


@DATASETS.register("toy")
def load_toy(config) -> DataBundle:
    """The toy dataset of ``config`` (T, reading, sizes; drawn from ``data_seed``, else ``seed``)."""
    seed = config.data_seed if config.data_seed is not None else config.seed
    return make_toy(config.T, config.reading, seed, config.n_train, config.n_val, config.n_test)


def main(argv=None) -> int:
    from monet.cli import ArgumentParser, check_output_file, parse_int, run_main

    p = ArgumentParser(prog="python -m monet.data.toy", description=__doc__.split("\n")[0])
    p.add_argument("--T", type=parse_int, default=5, help=f"number of tasks, 1 to {MAX_T}")
    p.add_argument("--reading", choices=READINGS, default="bits",
                   help="'bits' (the text's reading) or 'printed' (eq. 28 as printed)")
    p.add_argument("--seed", type=parse_int, default=0, help="seed of the draw")
    p.add_argument("--n-train", type=parse_int, default=500, help="training rows")
    p.add_argument("--n-val", type=parse_int, default=250, help="validation rows")
    p.add_argument("--n-test", type=parse_int, default=250, help="test rows")
    p.add_argument("--export", required=True,
                   help="CSV file to write (features x1, x2, labels task1.., split); replaced "
                        "atomically if it exists")
    a = p.parse_args(argv)

    def run(_):
        check_output_file(a.export, flag="--export")
        b = make_toy(a.T, a.reading, a.seed, a.n_train, a.n_val, a.n_test)
        from monet.io import atomic_write_text
        atomic_write_text(a.export, to_frame(b).to_csv(index=False, float_format="%.17g"))
        print(f"wrote {a.export}: {sum(b.meta['sizes'])} rows, T={a.T}, reading={a.reading}")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
