"""Bad input for every command line (issue 12): one ``error:`` line on stderr, exit code 2, and
nothing created or changed where the command would write.

Each row of ``ROWS`` is a real command run in a subprocess: the CLI, its argv (``{d}`` is the
module's folder of bad inputs, built once; ``{o}`` is the row's own folder, which is also its
working directory), the words the one error line must contain, and optionally a setup of ``{o}``
(an existing run folder, an empty folder, a read-only folder, a damaged experiment). After the
command, ``{o}`` must hold exactly what it held before (same names, sizes, bytes) and the inputs
in ``{d}`` must be unchanged.

No row starts Ray: the search rows run with ``RAY_ADDRESS`` pointing at a closed local port, so
a row whose check is not (yet) done before Ray starts ends at the address check instead (a wrong
error line, so the row fails) and never starts a cluster.

Rows marked ``xfail(strict=True, reason=WIRED)`` need ``monet.train`` / ``search/tune_monet.py``
to call the checks of ``monet.cli``, ``monet.config.check_device``,
``monet.data.cache.preflight_images`` and ``monet.io.clean_stale_tmp`` (the refactor does that);
they turn into failures (XPASS) as soon as the wiring lands: then drop the mark.

Speed (2 shared cores): the commands run in real processes forked from two "fork servers" that
imported torch, pandas, PIL, optuna and ray's modules once (``python tests/test_bad_input.py
--serve``; no Ray is started). Each command is its own process: the CLI module runs as
``__main__`` (as ``python -m`` / ``python script.py`` would), with its own working directory,
exit code, stdout and stderr. The servers' own imports must print nothing (checked), so a fresh
interpreter's stderr would hold the same one line. Rows with a read-only folder run as plain
subprocesses.

Read-only folders: as root, the command runs in its own mount namespace (``unshare -m``) with
the folder bind-mounted read-only (root ignores permission bits); otherwise the folder is
``chmod 555``. Where neither is possible, those rows are skipped.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WIRED = "wired in by the refactor"
CLIS = {
    "train": [sys.executable, "-m", "monet.train"],
    "tune": [sys.executable, str(REPO / "search" / "tune_monet.py")],
    "synthetic": [sys.executable, "-m", "monet.data.synthetic"],
    "cache": [sys.executable, "-m", "monet.data.cache"],
    "toy": [sys.executable, "-m", "monet.data.toy"],
}
# what the fork servers import once (the CLIs themselves are run fresh in each child)
PRELOAD = ("torch", "numpy", "pandas", "yaml", "PIL.Image", "pyarrow.parquet", "monet.config",
           "monet.cli", "monet.models", "monet.data", "monet.data.faces", "monet.data.au",
           "monet.data.celeba", "monet.data.affwild2", "monet.data.tabular", "monet.losses",
           "monet.metrics", "optuna", "ray.tune", "ray.tune.search.optuna")
TOY = ["--dataset", "toy", "--T", "3", "--n-train", "40", "--n-val", "20", "--n-test", "20"]
TRAIN = TOY + ["--family", "vmnc", "--epochs", "1", "--quiet"]
TUNE = TOY + ["--family", "vmnc", "--num-samples", "1", "--max-epochs", "1",
              "--storage-path", "{o}/results", "--name", "x"]
SYN = ["--format", "bp4d", "--subjects", "3", "--frames", "2", "--size", "16"]
CACHE = ["--dataset", "bp4d", "--size", "16", "--no-progress"]


def row(cli, args, words, setup=None, marks=(), id=None):
    """One bad input: ``cli`` (a key of CLIS), argv, words of the error line, setup of {o}."""
    return pytest.param(cli, list(args), list(words), setup, marks=list(marks), id=id)


def wired(*args, **kw):
    return row(*args, marks=[pytest.mark.xfail(strict=True, reason=WIRED)], **kw)


def _cuda() -> bool:
    if sys.argv[1:] == ["--serve"]:   # the fork server never touches CUDA (its children could not)
        return False
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


ROWS = [
    # ------------------------------------------------------------------ python -m monet.train
    row("train", TRAIN + ["--lr", "inf"], ["'lr'", "inf"], id="train-lr-inf"),
    row("train", TRAIN + ["--lr", "nan"], ["'lr'", "nan"], id="train-lr-nan"),
    row("train", TRAIN + ["--epochs", "99999999999999999999"], ["'epochs'", "1000000"],
        id="train-epochs-huge"),
    row("train", TRAIN + ["--num-workers", "-1"], ["'num_workers'", "-1"],
        id="train-num-workers-negative"),
    row("train", TRAIN + ["--T", "11"], ["'T'", "11"], id="train-T-11"),
    row("train", TRAIN + ["--reading", "typo"], ["reading", "typo"], id="train-reading-typo"),
    row("train", TRAIN + ["--val-subjects", "1.5"], ["val_subjects"], id="train-val-subjects"),
    row("train", TRAIN + ["--seed", "-1"], ["'seed'", "-1"], id="train-seed-negative"),
    row("train", TRAIN + ["--temperatures", "au=0"], ["temperatures"], id="train-temperature-0"),
    row("train", TRAIN + ["--device", "gpu"], ["device", "gpu"], id="train-device-gpu"),
    row("train", TRAIN + ["--dataset", "nope"], ["dataset", "'nope'"], id="train-dataset-nope"),
    row("train", TRAIN + ["--config", "{d}/three.yaml"], ["three.yaml", "'epochs'", "str", "number"],
        id="train-config-epochs-three"),
    row("train", TRAIN + ["--config", "{d}/list.yaml"], ["list.yaml", "mapping", "list"],
        id="train-config-list"),
    row("train", TRAIN + ["--config", "{d}/lrinf.yaml"], ["lrinf.yaml", "'lr'", "inf"],
        id="train-config-lr-inf"),
    row("train", TRAIN + ["--config", "{d}/scalar.yaml"], ["scalar.yaml", "mapping", "int"],
        id="train-config-scalar"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/nan.csv"],
        ["nan.csv", "line 2", "'x1'", "nan"], id="train-tabular-nan"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/inf.csv"],
        ["inf.csv", "line 6", "'x2'", "inf"], id="train-tabular-inf"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/two.csv"],
        ["two.csv", "line 8", "'task2'", "value 2", "0 or 1"], id="train-tabular-label-2"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/two_first.csv"],
        ["two_first.csv", "line 8", "'task1'", "value 2"], id="train-tabular-label-2-first"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/semicolon.csv"],
        ["semicolon.csv", "semicolon"], id="train-tabular-delimiter"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/ragged.csv"],
        ["ragged.csv", "line 5", "7 fields", "6"], id="train-tabular-ragged"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/header.csv"],
        ["header.csv", "header only"], id="train-tabular-header-only"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/empty_cell.csv"],
        ["empty_cell.csv", "line 4", "'x1'", "empty"], id="train-tabular-empty-cell"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/marked.csv"],
        ["marked.csv", "line 3", "'label:b'", "value 3"], id="train-tabular-marked-label-3"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/binary.csv"],
        ["binary.csv", "binary data"], id="train-tabular-binary"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}"],
        ["a folder", ".csv or .npz"], id="train-tabular-folder"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/nan.npz"],
        ["nan.npz", "x[2, 1]", "finite"], id="train-npz-nan"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/garbage.npz"],
        ["garbage.npz", "not a readable .npz"], id="train-npz-garbage"),
    row("train", TRAIN + ["--dataset", "tabular", "--data-root", "{d}/object.npz"],
        ["object.npz", "'y'", "object"], id="train-npz-object-y"),
    row("train", TRAIN + ["--dataset", "celeba", "--data-root", "{d}/celeba_bin",
                          "--backbone", "tiny_cnn"],
        ["list_attr_celeba.txt", "binary"], id="train-celeba-binary-attributes"),
    row("train", TRAIN + ["--dataset", "affwild2", "--data-root", "{d}/affwild2_frac",
                          "--backbone", "tiny_cnn"],
        ["training_set_annotations.txt", "non-numeric"], id="train-affwild2-fractional-au"),
    row("train", TRAIN + ["--epcohs", "3"], ["--epcohs", "did you mean --epochs"],
          id="train-unknown-flag"),
    row("train", TRAIN + ["--lr", "x"], ["--lr", "'x'"], id="train-lr-not-a-number"),
    row("train", TRAIN + ["--augment", "maybe"], ["--augment", "maybe"],
          id="train-bool-not-a-bool"),
    row("train", TRAIN + ["--config", "{d}/malformed.yaml"], ["malformed.yaml", "YAML", "line"],
          id="train-config-malformed"),
    row("train", TRAIN + ["--config", "{d}/binary.yaml"], ["binary.yaml", "binary"],
          id="train-config-binary"),
    row("train", TRAIN + ["--device", "cuda:99"], ["device", "cuda:99"],
          id="train-device-cuda-99"),
    row("train", TRAIN + ["--device", "cuda"], ["device", "cuda", "is_available"],
          id="train-device-cuda-no-gpu") if not _cuda() else
    row("train", TRAIN + ["--device", "cuda:99"], ["cuda:99"], id="train-device-cuda-no-gpu"),
    row("train", TRAIN + ["--out", "{d}/afile"], ["--out", "afile", "file"],
          id="train-out-is-a-file"),
    row("train", TRAIN + ["--out", "{o}/ro/run"], ["--out", "not writable"], setup="ro",
          id="train-out-read-only"),
    row("train", TRAIN + ["--out", "{o}/run"], ["--out", "not an empty folder", "--overwrite"],
          setup="run", id="train-out-existing-run"),
    row("train", TRAIN + ["--resume", "{o}/nope/checkpoint", "--out", "{o}/run2"],
          ["--resume", "nope"], id="train-resume-missing"),
    row("train", TRAIN + ["--resume", "{d}/ckpt/checkpoint.pt"], ["checkpoint.pt"],
          id="train-resume-truncated-checkpoint"),
    row("train", TRAIN + ["--dataset", "bp4d", "--data-root", "{d}/bp4d_trunc",
                            "--backbone", "tiny_cnn", "--image-size", "16", "--out", "{o}/run"],
          ["1002.jpg", "truncated"], id="train-bp4d-truncated-jpeg"),
    # ------------------------------------------------------------------ search/tune_monet.py
    row("tune", TUNE + ["--dataset", "nope"], ["--dataset", "'nope'"], id="tune-dataset-nope"),
    row("tune", TUNE + ["--num-samples", "x"], ["--num-samples"], id="tune-num-samples-x"),
    row("tune", TUNE + ["--max-epochs", "2", "--eval-every", "3"], ["--eval-every"],
        id="tune-eval-every-beyond-budget"),
    row("tune", TUNE + ["--max-epochs", "inf"], ["epochs", "inf"], id="tune-max-epochs-inf"),
    row("tune", TUNE + ["--T", "11"], ["'T'", "11"], id="tune-T-11"),
    row("tune", TUNE + ["--checkpoint-period", "-1"], ["--checkpoint-period", "-1", ">= 0"],
        id="tune-checkpoint-period-negative"),
    row("tune", TUNE + ["--metric", "test/mean_acc"], ["--metric", "val/"],
        id="tune-metric-test"),
    row("tune", TUNE + ["--space", "{d}/list.yaml"], ["list.yaml", "mapping", "list"],
        id="tune-space-list"),
    row("tune", TUNE + ["--space", "{d}/malformed.yaml"], ["malformed.yaml", "YAML"],
        id="tune-space-malformed"),
    row("tune", TUNE + ["--dataset", "tabular", "--data-root", "{d}/nan.csv"],
        ["nan.csv", "line 2", "'x1'"], id="tune-tabular-nan"),
    row("tune", TUNE + ["--dataset", "tabular", "--data-root", "{d}/two.csv"],
        ["two.csv", "'task2'", "0 or 1"], id="tune-tabular-label-2"),
    row("tune", TUNE + ["--resume", "--name", "nothere"], ["--resume", "nothere"],
        id="tune-resume-nothing"),
    row("tune", TUNE + ["--num-sample", "3"], ["--num-sample", "did you mean --num-samples"],
          id="tune-unknown-flag"),
    row("tune", TUNE + ["--space", "{d}/binary.yaml"], ["binary.yaml", "binary"],
          id="tune-space-binary"),
    row("tune", TUNE + ["--num-cpus", "-1"], ["--num-cpus", "-1"], id="tune-num-cpus-negative"),
    row("tune", TUNE + ["--metric", "val/bogus"], ["--metric", "val/bogus"],
          id="tune-metric-unknown"),
    row("tune", TOY + ["--family", "vmnc", "--storage-path", "{d}/afile", "--name", "x"],
          ["--storage-path", "afile"], id="tune-storage-path-file"),
    row("tune", TOY + ["--family", "vmnc", "--storage-path", "{o}/ro", "--name", "x"],
          ["--storage-path", "not writable"], setup="ro", id="tune-storage-path-read-only"),
    row("tune", TUNE[:-2] + ["--name", "x", "--resume"], ["config.yaml"], setup="badexp",
          id="tune-resume-truncated-experiment"),
    row("tune", TUNE + ["--dataset", "bp4d", "--data-root", "{d}/bp4d_trunc",
                          "--image-size", "16"],
          ["1002.jpg", "truncated"], id="tune-bp4d-truncated-jpeg"),
    # ------------------------------------------------------------------ python -m monet.data.synthetic
    row("synthetic", SYN + ["--out", "{d}/afile"], ["--out", "afile", "is a file"],
        id="synthetic-out-is-a-file"),
    row("synthetic", SYN + ["--out", "{d}/afile/sub"], ["--out", "is a file"],
        id="synthetic-out-under-a-file"),
    row("synthetic", SYN + ["--out", "{o}/ro/new"], ["--out", "not writable"], setup="ro",
        id="synthetic-out-read-only"),
    row("synthetic", SYN + ["--out", "{d}/bp4d"], ["--out", "not an empty folder"],
        id="synthetic-out-not-empty"),
    row("synthetic", SYN + ["--out", "{o}/s", "--subjects", "2"], ["--subjects", "2"],
        id="synthetic-subjects-2"),
    row("synthetic", SYN + ["--out", "{o}/s", "--frames", "99999999999999999999"],
        ["--frames"], id="synthetic-frames-huge"),
    row("synthetic", SYN + ["--out", "{o}/s", "--size", "8"], ["--size", "8"],
        id="synthetic-size-8"),
    row("synthetic", SYN + ["--out", "{o}/s", "--seed", "-1"], ["--seed", "-1"],
        id="synthetic-seed-negative"),
    row("synthetic", SYN + ["--out", "{o}/s", "--layout", "raw"], ["--layout raw", "DISFA"],
        id="synthetic-raw-layout-bp4d"),
    row("synthetic", ["--fromat", "bp4d", "--out", "{o}/s"], ["--fromat", "did you mean --format"],
        id="synthetic-unknown-flag"),
    row("synthetic", ["--format", "nope", "--out", "{o}/s"], ["--format", "nope"],
        id="synthetic-format-nope"),
    row("synthetic", SYN, ["--out", "required"], id="synthetic-no-out"),
    row("synthetic", SYN + ["--out", ""], ["--out", "empty path"], id="synthetic-out-empty"),
    # ------------------------------------------------------------------ python -m monet.data.cache
    row("cache", CACHE + ["--data-root", "{d}/bp4d_trunc", "--out", "{o}/c"],
        ["1002.jpg", "truncated", "BP4D_"], id="cache-truncated-jpeg"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d_corrupt", "--out", "{o}/c"],
        ["1002.jpg", "cannot decode"], id="cache-corrupt-jpeg"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d_text", "--out", "{o}/c"],
        ["1002.jpg", "cannot identify"], id="cache-not-an-image"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d_trunc", "--out", "{o}/empty"],
        ["1002.jpg"], setup="empty", id="cache-truncated-jpeg-into-empty-folder"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d_badpng", "--out", "{o}/c"],
        ["1002.jpg", "cannot decode"], id="cache-png-bad-stream-found-at-decode"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d_badpng", "--out", "{o}/empty"],
        ["1002.jpg", "cannot decode"], setup="empty", id="cache-png-bad-stream-empty-folder"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d_label2", "--out", "{o}/c"],
        ["BP4D_", "= 2", "0 or 1"], id="cache-label-2"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d", "--out", "{d}/afile"],
        ["--out", "afile", "is a file"], id="cache-out-is-a-file"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d", "--out", "{o}/ro/c"],
        ["--out", "not writable"], setup="ro", id="cache-out-read-only"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d", "--out", "{d}/bp4d"],
        ["--out", "not an empty folder"], id="cache-out-not-empty"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d", "--out", ""], ["--out", "empty path"],
        id="cache-out-empty"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d", "--out", "{o}/c", "--workers", "0"],
        ["--workers", "0"], id="cache-workers-0"),
    row("cache", ["--dataset", "bp4d", "--data-root", "{d}/bp4d", "--out", "{o}/c", "--size", "4"],
        ["--size", "4"], id="cache-size-4"),
    row("cache", CACHE + ["--data-root", "{d}/nope", "--out", "{o}/c"], ["nope"],
        id="cache-data-root-missing"),
    row("cache", ["--dataset", "celeba", "--data-root", "{d}/celeba_bin", "--out", "{o}/c",
                  "--size", "16"], ["list_attr_celeba.txt", "binary"],
        id="cache-celeba-binary-attributes"),
    row("cache", CACHE + ["--data-root", "{d}/bp4d", "--out", "{o}/c", "--layuot", "raw"],
        ["--layuot", "did you mean --layout"], id="cache-unknown-flag"),
    # ------------------------------------------------------------------ python -m monet.data.toy
    row("toy", ["--T", "3", "--export", "{o}"], ["--export", "folder"], id="toy-export-folder"),
    row("toy", ["--T", "3", "--export", "{o}/"], ["--export", "folder"],
        id="toy-export-folder-slash"),
    row("toy", ["--T", "3", "--export", "{d}/afile/t.csv"], ["--export", "is a file"],
        id="toy-export-under-a-file"),
    row("toy", ["--T", "3", "--export", "{o}/ro/t.csv"], ["--export", "not writable"],
        setup="ro", id="toy-export-read-only"),
    row("toy", ["--T", "0", "--export", "{o}/t.csv"], ["T", "0"], id="toy-T-0"),
    row("toy", ["--T", "11", "--export", "{o}/t.csv"], ["T", "11"], id="toy-T-11"),
    row("toy", ["--n-train", "99999999999", "--export", "{o}/t.csv"], ["n_train"],
        id="toy-n-train-huge"),
    row("toy", ["--seed", "-1", "--export", "{o}/t.csv"], ["seed", "-1"],
        id="toy-seed-negative"),
    row("toy", ["--reading", "typo", "--export", "{o}/t.csv"], ["--reading", "typo"],
        id="toy-reading-typo"),
    row("toy", ["--T", "x", "--export", "{o}/t.csv"], ["--T", "'x'"], id="toy-T-not-a-number"),
    row("toy", ["--exprt", "{o}/t.csv"], ["--exprt", "did you mean --export"],
        id="toy-unknown-flag"),
    row("toy", ["--T", "3"], ["--export", "required"], id="toy-no-export"),
    row("toy", ["--T", "3", "--export", ""], ["--export", "empty path"], id="toy-export-empty"),
]


# ---------------------------------------------------------------------------------- inputs
def _write_lines(path: Path, lines) -> None:
    path.write_text("\n".join(lines) + "\n")


def _set(line: str, j: int, v: str) -> str:
    r = line.split(",")
    r[j] = v
    return ",".join(r)


def _bad_png() -> bytes:
    """A PNG whose chunk checksums are right but whose compressed data is not: PIL's verify()
    passes it, decoding fails (the cache build finds it only while writing)."""
    from PIL import Image

    im = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype("uint8"))
    b = io.BytesIO()
    im.save(b, format="PNG")
    data = bytearray(b.getvalue())
    i = data.find(b"IDAT")
    n = struct.unpack(">I", data[i - 4:i])[0]
    for k in range(i + 24, i + 4 + n - 8):
        data[k] ^= 0x5A
    data[i + 4 + n:i + 8 + n] = struct.pack(">I", zlib.crc32(bytes(data[i:i + 4 + n])))
    return bytes(data)


def _make_inputs(d: Path) -> None:
    from monet.data.synthetic import write_synthetic
    from monet.data.toy import make_toy, to_frame

    ok = to_frame(make_toy(T=3, seed=0, n_train=40, n_val=20, n_test=20)).to_csv(
        index=False, float_format="%.17g").splitlines()   # x1,x2,task1,task2,task3,split
    _write_lines(d / "toy.csv", ok)
    _write_lines(d / "nan.csv", [ok[0], _set(ok[1], 0, "nan")] + ok[2:])
    _write_lines(d / "inf.csv", ok[:5] + [_set(ok[5], 1, "inf")] + ok[6:])
    _write_lines(d / "two.csv", ok[:7] + [_set(ok[7], 3, "2")] + ok[8:])
    _write_lines(d / "two_first.csv", ok[:7] + [_set(ok[7], 2, "2")] + ok[8:])
    _write_lines(d / "semicolon.csv", [ln.replace(",", ";") for ln in ok])
    _write_lines(d / "ragged.csv", ok[:4] + [ok[4] + ",0.5"] + ok[5:])
    _write_lines(d / "header.csv", ok[:1])
    _write_lines(d / "empty_cell.csv", ok[:3] + [_set(ok[3], 0, "")] + ok[4:])
    _write_lines(d / "marked.csv", ["f,label:a,label:b", "0.5,1,0", "0.1,0,3", "0.2,1,1"])
    (d / "binary.csv").write_bytes(b"x1,x2\n\x00\x01\x02\xff")
    x = np.zeros((8, 2))
    x[2, 1] = np.nan
    np.savez(d / "nan.npz", x=x, y=np.ones((8, 2), int))
    (d / "garbage.npz").write_bytes(b"this is not a zip archive" * 10)
    np.savez(d / "object.npz", x=np.zeros((8, 2)), y=np.array([[0, 1]] * 8, dtype=object))
    (d / "afile").write_text("just a file\n")
    (d / "three.yaml").write_text('epochs: "three"\n')
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "lrinf.yaml").write_text("lr: .inf\n")
    (d / "scalar.yaml").write_text("42\n")
    (d / "malformed.yaml").write_text("epochs: [1, 2\nlr: 0.1\n")
    (d / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    (d / "ckpt").mkdir()
    import torch
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(64, 64)}, "step": 3}, buf)
    (d / "ckpt" / "checkpoint.pt").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])

    write_synthetic("bp4d", d / "bp4d", subjects=3, frames=4, size=32)
    img = "img/F001/T1/1002.jpg"
    jpeg = (d / "bp4d" / img).read_bytes()
    for name, data in (("bp4d_trunc", jpeg[: len(jpeg) // 2]),
                       ("bp4d_corrupt", jpeg[:200] + bytes(len(jpeg) - 200)),
                       ("bp4d_text", b"not an image at all\n"),
                       ("bp4d_badpng", _bad_png())):
        shutil.copytree(d / "bp4d", d / name)
        (d / name / img).write_bytes(data)
    shutil.copytree(d / "bp4d", d / "bp4d_label2")
    lab = d / "bp4d_label2" / "list" / "BP4D_train_label_fold1.txt"
    lines = lab.read_text().splitlines()
    lines[1] = "2" + lines[1][1:]
    _write_lines(lab, lines)

    write_synthetic("celeba", d / "celeba_bin", subjects=3, frames=2, size=16)
    (d / "celeba_bin" / "list_attr_celeba.txt").write_bytes(b"\x00\x01\x02binary\xff" * 20)
    write_synthetic("affwild2", d / "affwild2_frac", subjects=3, frames=3, size=16)
    ann = d / "affwild2_frac" / "training_set_annotations.txt"
    lines = ann.read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",1.5"
    _write_lines(ann, lines)


def _setup(o: Path, setup) -> None:
    if setup == "run":
        run = o / "run"
        (run / "checkpoint").mkdir(parents=True)
        (run / "config.yaml").write_text("family: vmnc\nT: 3\n")
        (run / "metrics.jsonl").write_text('{"round": 1}\n')
        (run / "checkpoint" / "checkpoint.pt").write_bytes(b"weights")
    elif setup == "empty":
        (o / "empty").mkdir()
    elif setup == "ro":
        (o / "ro").mkdir()
        if os.geteuid() != 0:
            (o / "ro").chmod(0o555)
    elif setup == "badexp":
        exp = o / "results" / "x"
        exp.mkdir(parents=True)
        (exp / "config.yaml").write_text("search:\n  dataset: toy\n  families: [vm")
        (exp / "tuner.pkl").write_bytes(b"\x80\x04\x95")


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames:
            out[os.path.relpath(os.path.join(dirpath, n), root)] = "dir"
        for n in filenames:
            p = os.path.join(dirpath, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ro_wrapper_works(tmp: Path) -> bool:
    """As root: can this machine bind-mount a folder read-only in a private mount namespace?"""
    if os.geteuid() != 0:
        return True
    if not shutil.which("unshare"):
        return False
    probe = tmp / "ro_probe"
    probe.mkdir()
    r = subprocess.run(["unshare", "-m", "sh", "-c",
                        f'mount --bind "{probe}" "{probe}" && mount -o remount,bind,ro "{probe}" "{probe}"'
                        f' && ! touch "{probe}/x" 2>/dev/null'], capture_output=True)
    return r.returncode == 0 and not (probe / "x").exists()


def _command(cli, args, d: Path, o: Path, setup):
    argv = CLIS[cli] + [a.replace("{d}", str(d)).replace("{o}", str(o)) for a in args]
    if setup == "ro" and os.geteuid() == 0:
        ro = str(o / "ro")
        argv = ["unshare", "-m", "sh", "-c",
                f'mount --bind "{ro}" "{ro}" && mount -o remount,bind,ro "{ro}" "{ro}" '
                f'&& exec "$@"', "sh"] + argv
    return argv


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Build the inputs once, then run every row (2 at a time) and record what it did."""
    base = tmp_path_factory.mktemp("bad_input")
    d = base / "inputs"
    d.mkdir()
    _make_inputs(d)
    inputs_before = _snapshot(d)
    ro_ok = _ro_wrapper_works(base)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "")
                                                      .split(os.pathsep) if p])
    env.update(OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", PYTHONWARNINGS="ignore",
               RAY_ADDRESS=f"127.0.0.1:{_closed_port()}")   # no row can start Ray
    jobs = {}
    for i, p in enumerate(ROWS):
        cli, args, words, setup = p.values
        if setup == "ro" and not ro_ok:
            continue
        o = base / "rows" / f"{i:03d}"
        o.mkdir(parents=True)
        _setup(o, setup)
        jobs[p.id] = (_command(cli, args, d, o, setup), o, _snapshot(o))

    servers = [ForkServer(env) for _ in range(2)]
    queue = list(jobs.items())

    def work(server):
        done = {}
        while True:
            try:
                key, (argv, o, _) = queue.pop(0)
            except IndexError:
                return done
            if argv[0] == "unshare":             # read-only rows: a plain subprocess
                try:
                    r = subprocess.run(argv, capture_output=True, text=True, cwd=str(o),
                                       env=env, timeout=240)
                    done[key] = (r.returncode, r.stdout, r.stderr)
                except subprocess.TimeoutExpired:
                    done[key] = (None, "", "timed out")
            else:
                done[key] = server.run(argv, o)

    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            done = {}
            for part in pool.map(work, servers):
                done.update(part)
        preload_noise = [s.noise for s in servers]
    finally:
        for s in servers:
            s.close()
    results = {k: (*done[k], jobs[k][2], _snapshot(jobs[k][1]), jobs[k][0]) for k in jobs}
    yield {"results": results, "inputs": d, "inputs_before": inputs_before, "ro_ok": ro_ok,
           "preload_noise": preload_noise}
    for dirpath, dirnames, _ in os.walk(base):     # chmod 555 folders: make them removable
        for n in dirnames:
            os.chmod(os.path.join(dirpath, n), 0o755)


@pytest.mark.parametrize("cli, args, words, setup", ROWS)
def test_bad_input(world, request, cli, args, words, setup):
    key = request.node.callspec.id
    if key not in world["results"]:
        pytest.skip("no read-only folder on this machine (needs unshare -m as root, or non-root)")
    rc, out, err, before, after, argv = world["results"][key]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    shown = f"\nargv: {' '.join(argv)}\nrc: {rc}\nstderr:\n{err[-3000:]}"
    assert rc == 2, shown
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: "), shown
    for w in words:
        assert w in lines[0], f"missing {w!r}" + shown
    assert after == before, f"files created or changed: " \
        f"{sorted(set(after.items()) ^ set(before.items()))[:6]}" + shown


def test_fork_servers_imports_print_nothing(world):
    """What the servers imported once printed nothing: a fresh process per row would show the
    same single stderr line."""
    assert world["preload_noise"] == ["", ""]


def test_inputs_unchanged(world):
    """No row wrote into, or changed, the shared inputs (the bp4d folder used as --out included)."""
    assert _snapshot(world["inputs"]) == world["inputs_before"]


def test_enough_rows():
    clis = {p.values[0] for p in ROWS}
    assert len(ROWS) >= 60 and clis == set(CLIS)


# ---------------------------------------------------------------------------------- pieces
def test_check_output_dir(tmp_path):
    from monet.cli import check_output_dir, check_output_file, check_writable_dir
    from monet.errors import ConfigError

    (tmp_path / "f").write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("a: 1\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert check_output_dir(run, overwrite=True) == run
    for path, kw, words in ((tmp_path / "f", {}, ["is a file"]),
                            (tmp_path / "f" / "sub", {}, ["is a file, not a folder"]),
                            (run, {}, ["a run folder", "--overwrite"]),
                            (other, {"overwrite": True}, ["not a run folder"]),
                            ("", {}, ["empty path"])):
        with pytest.raises(ConfigError) as e:
            check_output_dir(path, **kw)
        assert all(w in str(e.value) for w in words) and "\n" not in str(e.value)
    assert check_writable_dir(other, "--storage-path") == other      # may hold other things
    for path, words in ((tmp_path / "f", "is a file"), (tmp_path / "f" / "x", "not a folder")):
        with pytest.raises(ConfigError, match=words):
            check_writable_dir(path, "--storage-path")
    for path, words in ((tmp_path, "is a folder"), (tmp_path / "f" / "x.csv", "not a folder")):
        with pytest.raises(ConfigError, match=words):
            check_output_file(path, "--export")
    assert check_output_file(tmp_path / "new" / "t.csv", "--export").name == "t.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "other", "run"]


def test_load_yaml_mapping(tmp_path):
    from monet.cli import load_yaml_mapping
    from monet.errors import ConfigError

    cases = {"list.yaml": (b"- 1\n- 2\n", "got a list (2 items)"),
             "bad.yaml": (b"a: [1, 2\n", "not valid YAML at line"),
             "bin.yaml": (b"\x00\x01\x02", "binary data at byte 0"),
             "latin.yaml": (b"a: caf\xe9\n", "binary data at byte"),
             "text.yaml": (b"just words\n", "got text 'just words'")}
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_yaml_mapping(tmp_path / name, "--config")
    with pytest.raises(ConfigError, match="--config: no such file"):
        load_yaml_mapping(tmp_path / "nope.yaml", "--config")
    with pytest.raises(ConfigError, match="is a folder"):
        load_yaml_mapping(tmp_path, "--config")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "ok.yaml").write_text("lr: 1e-4\n")
    assert load_yaml_mapping(tmp_path / "empty.yaml", "--config") == {}
    assert load_yaml_mapping(tmp_path / "ok.yaml", "--config") == {"lr": "1e-4"}


def test_config_types_ranges_and_yaml(tmp_path):
    from monet.config import TrainConfig, check_device
    from monet.errors import ConfigError

    bad = {"lr": float("inf"), "epochs": 10 ** 20, "num_workers": -1, "T": "three",
           "augment": "yes", "order": [0, "a"], "device": "gpu", "fold": 2.5, "seed": True,
           "dropout": 1.0, "temperatures": {"au": -1}}
    for k, v in bad.items():
        with pytest.raises(ConfigError, match=f"field '{k}'"):
            TrainConfig.from_dict({k: v})
    with pytest.raises(ConfigError, match="'epochs' = 'three' \\(str\\); expected a number"):
        TrainConfig.from_dict({"epochs": "three"})
    with pytest.raises(ConfigError, match="expected a mapping .* got a list"):
        TrainConfig.from_dict([1, 2])
    c = TrainConfig.from_dict({"lr": "1e-4", "fold": 2.0})      # YAML 1.1 reads 1e-4 as text
    assert c.lr == 1e-4 and c.fold == 2 and isinstance(c.fold, int)
    f = tmp_path / "c.yaml"
    f.write_text("- family\n- vmnc\n")
    with pytest.raises(ConfigError, match="c.yaml: expected a mapping"):
        TrainConfig.from_yaml(f)
    check_device(TrainConfig(device="cpu"))
    if not _cuda():
        with pytest.raises(ConfigError, match="torch.cuda.is_available\\(\\) is False"):
            check_device(TrainConfig(device="cuda"))


def test_config_flags_help_from_field_metadata():
    """--help of a parser built by add_config_flags: meaning, default and choices per flag."""
    from monet.cli import ArgumentParser, add_config_flags

    p = ArgumentParser(prog="x")
    add_config_flags(p)
    text = " ".join(p.format_help().split())
    assert "--optimizer OPTIMIZER optimizer of the network weights (choices: adam, adamw; " \
           "default: adam)" in text
    assert "--epochs X training length in epochs (fractions allowed); in (0, 1000000] " \
           "(default: 500)" in text
    assert "--lr X learning rate; > 0 (default: 0.0005)" in text
    q = ArgumentParser(prog="y")
    assert add_config_flags(q, only=("T", "reading", "data_root"), group=None) == \
        ["T", "reading", "data_root"]
    assert q.parse_args(["--T", "3", "--reading", "printed"]).T == 3


@pytest.mark.parametrize("cli", ["synthetic", "cache", "toy", "train", "tune"])
def test_help_shows_meaning_and_defaults(cli):
    r = subprocess.run(CLIS[cli] + ["--help"], capture_output=True, text=True, cwd=str(REPO),
                       timeout=120)
    assert r.returncode == 0
    flags = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("--")
             and not ln.strip().startswith("--help")]
    assert flags
    undocumented = [ln for ln in flags if len(ln.split()) < 3]
    assert not undocumented, undocumented
    assert "default:" in r.stdout and "choices:" in r.stdout


def test_clean_stale_tmp(tmp_path):
    from monet.io import atomic_write_text, clean_stale_tmp

    ck = tmp_path / "run" / "checkpoint"
    ck.mkdir(parents=True)
    (ck / ".checkpoint.pt.a1b2c3.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "run" / ".config.yaml.zz.tmp").write_text("half")
    (ck / "keep.tmp").write_text("not ours")
    atomic_write_text(ck / "checkpoint.pt", "whole")
    removed = clean_stale_tmp(tmp_path / "run")
    assert sorted(p.name for p in removed) == [".checkpoint.pt.a1b2c3.tmp", ".config.yaml.zz.tmp"]
    assert sorted(p.name for p in ck.iterdir()) == ["checkpoint.pt", "keep.tmp"]
    assert clean_stale_tmp(tmp_path / "nope") == []


def test_preflight_images(tmp_path):
    from monet.data.cache import preflight_images
    from monet.errors import DataError
    from PIL import Image

    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (120, 30, 200)).save(good, quality=90)
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "badpng.png").write_bytes(_bad_png())
    preflight_images([good] * 5)
    preflight_images([tmp_path / "badpng.png"])                 # verify() alone passes it
    with pytest.raises(DataError, match="badpng.png: cannot decode"):
        preflight_images([tmp_path / "badpng.png"], full=True)
    with pytest.raises(DataError, match=r"trunc.jpg: cannot decode image \(.*runcated.*\) "
                                        r"\(listed in a.txt:2\); 2 of 3 images are bad"):
        preflight_images([good, tmp_path / "trunc.jpg", tmp_path / "trunc.jpg"],
                         origins=[("a.txt", 1), ("a.txt", 2), ("a.txt", 3)])


# ---------------------------------------------------------------------------------- fork server
class ForkServer:
    """A Python process that imported PRELOAD once and forks one child per command.

    ``run(argv, cwd)`` -> ``(returncode, stdout, stderr)`` of ``argv`` (``python -m MOD ...`` or
    ``python SCRIPT ...``) run in a forked child: its own process, working directory, exit code
    and output files; the module runs as ``__main__`` through ``runpy``.
    """

    def __init__(self, env: dict):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, cwd=str(REPO))
        first = self.proc.stdout.readline()
        if not first.startswith("ready"):
            raise RuntimeError(f"fork server did not start: {first}{self.proc.stderr.read()}")
        self.noise = ""

    def run(self, argv, cwd, timeout: float = 240.0):
        import json

        job = {"argv": argv[1:], "cwd": str(cwd), "timeout": timeout}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        r = json.loads(self.proc.stdout.readline())
        return r["rc"], r["out"], r["err"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
        self.noise = self.proc.stderr.read() if self.proc.stderr else ""
        self.noise = self.noise.strip()


def _serve() -> None:  # pragma: no cover - runs in the server process
    import importlib
    import json
    import runpy
    import signal
    import tempfile
    import time
    import traceback

    sys.path.insert(0, str(REPO))
    for m in PRELOAD:
        importlib.import_module(m)
    sys.stderr.flush()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        job = json.loads(line)
        argv = job["argv"]
        fd_out, out_path = tempfile.mkstemp(prefix="bad_input_out_")
        fd_err, err_path = tempfile.mkstemp(prefix="bad_input_err_")
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()
                os.chdir(job["cwd"])
                os.dup2(fd_out, 1)
                os.dup2(fd_err, 2)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                sys.stdin = open(0, closefd=False)
                if argv[0] == "-m":
                    target, rest = argv[1], argv[2:]
                    sys.argv = [target] + rest
                    for name in [n for n in sys.modules if n == target]:
                        del sys.modules[name]
                    run = lambda: runpy.run_module(target, run_name="__main__", alter_sys=True)
                else:
                    target, rest = argv[0], argv[1:]
                    sys.argv = [target] + rest
                    sys.path[0] = os.path.dirname(os.path.abspath(target))
                    run = lambda: runpy.run_path(target, run_name="__main__")
                try:
                    run()
                    code = 0
                except SystemExit as e:
                    if e.code is None:
                        code = 0
                    elif isinstance(e.code, int):
                        code = e.code
                    else:
                        print(e.code, file=sys.stderr)
                        code = 1
                except BaseException:
                    traceback.print_exc()
                    code = 1
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        os.close(fd_out)
        os.close(fd_err)
        deadline = time.time() + float(job["timeout"])
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.time() > deadline:
                os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                rc = None
                break
            time.sleep(0.02)
        with open(out_path, errors="replace") as f:
            out = f.read()
        with open(err_path, errors="replace") as f:
            err = f.read() if rc is not None else "timed out"
        os.unlink(out_path)
        os.unlink(err_path)
        sys.stdout.write(json.dumps({"rc": rc, "out": out, "err": err}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve()
