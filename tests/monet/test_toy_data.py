"""Toy dataset readings, sizes, seeding, CSV export and the generic tabular reader."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from monet.data.tabular import load_tabular
from monet.data.toy import make_toy, toy_labels
from monet.errors import ConfigError, DataError


def test_bits_reading_follows_binary_digits():
    x1 = np.array([-0.99, -0.6, -0.3, 0.1, 0.4, 0.9])
    # u = (x1 + 1) / 2 = 0.005, 0.2, 0.35, 0.55, 0.7, 0.95 ; digits 1..3 of u in binary
    want = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 0, 1], [1, 1, 1]])
    assert np.array_equal(toy_labels(x1, 3, "bits"), want)


def test_printed_reading_is_the_next_digit():
    x1 = np.random.default_rng(0).uniform(-1, 1, 1000)
    bits4 = toy_labels(x1, 4, "bits")
    printed = toy_labels(x1, 3, "printed")
    assert np.array_equal(printed, bits4[:, 1:])
    # eq. 28 literally: y_t = 1 iff x1 in some [b_2i, b_2i+1], b_i = -1 + (i - 1) / 2^t
    for t in (1, 2, 3):
        b = lambda i: -1 + (i - 1) / 2 ** t  # noqa: E731
        lit = np.zeros_like(x1, dtype=int)
        for i in range(1, 2 ** t + 1):
            lit |= ((x1 >= b(2 * i)) & (x1 < b(2 * i + 1))).astype(int)
        assert np.array_equal(printed[:, t - 1], lit)


def test_task1_bits_is_one_boundary():
    b = make_toy(T=1, seed=0, n_train=2000)
    x, y = b.train.x[:, 0], b.train.y[:, 0]
    assert torch.equal(y, (x >= 0).float())


def test_sizes_seeds_and_range():
    b = make_toy(T=10, seed=5)
    assert (len(b.train), len(b.val), len(b.test)) == (500, 250, 250)
    assert b.spec.T == 10 and b.input_shape == (2,)
    assert float(b.train.x.abs().max()) <= 1.0
    assert torch.equal(make_toy(T=3, seed=5).train.x, make_toy(T=3, seed=5).train.x)
    assert not torch.equal(make_toy(T=3, seed=5).train.x, make_toy(T=3, seed=6).train.x)
    s = make_toy(T=2, seed=0, n_train=30, n_val=20, n_test=10)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 20, 10)
    # labels are balanced-ish binary digits
    assert 0.4 < float(b.train.y.mean()) < 0.6


@pytest.mark.parametrize("kw,msg", [(dict(T=0), "T: expected an integer from 1 to 10"),
                                     (dict(T=11), "from 1 to 10"),
                                     (dict(reading="nope"), "reading"),
                                     (dict(n_train=0), "n_train")])
def test_bad_toy_arguments(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        make_toy(**kw)


def test_export_csv_reads_back_identically(tmp_path):
    out = tmp_path / "toy.csv"
    r = subprocess.run([sys.executable, "-m", "monet.data.toy", "--T", "5", "--seed", "3",
                        "--export", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    import pandas as pd
    df = pd.read_csv(out)
    assert list(df.columns) == ["x1", "x2"] + [f"task{t}" for t in range(1, 6)] + ["split"]
    assert len(df) == 1000
    a, b = make_toy(T=5, seed=3), load_tabular(out)
    assert b.spec.names == a.spec.names
    for split in ("train", "val", "test"):
        sa, sb = getattr(a, split), getattr(b, split)
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y)


def test_tabular_npz_and_errors(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3))
    y = (x[:, :2] > 0).astype(int)
    np.savez(tmp_path / "d.npz", x=x, y=y, label_names=np.array(["a", "b"]))
    b = load_tabular(tmp_path / "d.npz")
    assert b.spec.names == ("a", "b") and b.input_shape == (3,)
    assert len(b.train) + len(b.val) + len(b.test) == 40
    np.savez(tmp_path / "bad.npz", x=x, y=y * 2)
    with pytest.raises(DataError, match=r"bad.npz: y\[.*labels must be 0 or 1"):
        load_tabular(tmp_path / "bad.npz")
    (tmp_path / "bad.csv").write_text("f,l1,split\n0.5,1,train\n0.1,3,val\n0.2,0,test\n")
    with pytest.raises(DataError, match=r"bad.csv: line 3, column 'l1': value 3"):
        load_tabular(tmp_path / "bad.csv", label_columns=["l1"])
    with pytest.raises(DataError, match="missing column"):
        load_tabular(tmp_path / "bad.csv", label_columns=["nope"])
    with pytest.raises(DataError, match="no such file"):
        load_tabular(tmp_path / "missing.csv")
