"""Issue 4 end to end: the search CLI on synthetic BP4D in the ME-GraphAU layout."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_tune_monet_runs_on_synthetic_bp4d(tmp_path):
    data = tmp_path / "bp4d"
    r = subprocess.run([sys.executable, "-m", "monet.data.synthetic", "--format", "bp4d",
                        "--out", str(data), "--subjects", "9", "--frames", "12", "--size", "40"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    space = tmp_path / "space.yaml"
    space.write_text("backbone: tiny_cnn\nbatch_size: [16]\n")
    r = subprocess.run([sys.executable, "search/tune_monet.py", "--dataset", "bp4d",
                        "--data-root", str(data), "--family", "vmnc", "--space", str(space),
                        "--num-samples", "2", "--max-epochs", "1", "--eval-every", "0.5",
                        "--storage-path", str(tmp_path / "res"), "--name", "b", "--num-cpus", "2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    exp = tmp_path / "res" / "b"
    df = pd.read_parquet(exp / "trials.parquet")
    assert len(df) == 2
    best = yaml.safe_load((exp / "best_config.yaml").read_text())
    assert best["metric"] == "val/mean_f1" and best["dataset"] == "bp4d"
    assert 0.0 <= best["value"] <= 1.0
