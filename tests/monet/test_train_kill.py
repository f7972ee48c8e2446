"""``python -m monet.train`` killed with SIGKILL at a random round, then ``--resume RUN_DIR``
alone: the finished run equals an uninterrupted one bit for bit (weights, metrics, test)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from monet.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--dataset", "toy", "--family", "monet", "--T", "4", "--M", "10", "--k", "5",
        "--warmup", "0.5", "--epochs", "6", "--eval-every", "0.25", "--seed", "5",
        "--n-train", "256", "--batch-size", "16", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _train(*args, **kw):
    return subprocess.run([sys.executable, "-m", "monet.train", *ARGS, *args], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=600, **kw)


def _metrics(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_sigkill_then_resume_run_dir_alone_is_bit_exact(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _train("--out", str(whole)).returncode == 0
    n_rounds = len(_metrics(whole))
    stop_at = random.Random(1234).randint(3, n_rounds - 4)     # a seeded random round
    proc = subprocess.Popen([sys.executable, "-m", "monet.train", *ARGS, "--out", str(killed)],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        f = killed / "metrics.jsonl"
        if f.is_file() and len(f.read_text().splitlines()) >= stop_at:
            break
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(_metrics(killed)) < n_rounds, "the run finished before the kill"
    r = subprocess.run([sys.executable, "-m", "monet.train", "--resume", str(killed), "--quiet"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert _metrics(killed) == _metrics(whole)
    a, b = load_checkpoint(whole / "checkpoint"), load_checkpoint(killed / "checkpoint")
    assert a["step"] == b["step"] and a.keys() == b.keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (killed / "test_metrics.yaml").read_text() == (whole / "test_metrics.yaml").read_text()
    assert not list(killed.rglob("*.tmp"))


def test_resume_refuses_a_contradicting_flag_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    assert _train("--epochs", "0.5", "--out", str(run)).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    r = subprocess.run([sys.executable, "-m", "monet.train", "--resume", str(run), "--M", "6"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --M: M = 6 contradicts the resumed run's 10; a resumed run keeps its saved config"]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
