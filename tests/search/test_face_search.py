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
    space.write_text("batch_size: [16]\n")
    r = subprocess.run([sys.executable, "search/tune_monet.py", "--dataset", "bp4d",
                        "--data-root", str(data), "--family", "vmnc", "--space", str(space),
                        "--backbone", "tiny_cnn", "--augment", "true",
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
    cfg = yaml.safe_load((exp / "best_train_config.yaml").read_text())
    assert cfg["backbone"] == "tiny_cnn" and cfg["augment"] is True


def test_a_configuration_that_cannot_train_is_refused_before_ray(tmp_path):
    """--backbone mlp on images: one line, exit 2, no experiment folder, Ray never started."""
    data = tmp_path / "bp4d"
    from monet.data.synthetic import write_synthetic
    write_synthetic("bp4d", data, subjects=6, frames=3, size=32)
    r = subprocess.run([sys.executable, "search/tune_monet.py", "--dataset", "bp4d",
                        "--data-root", str(data), "--backbone", "mlp", "--image-size", "32",
                        "--storage-path", str(tmp_path / "res"), "--name", "x"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: backbone: 'mlp' needs vector input, got input shape (3, 32, 32); "
        "use 'tiny_cnn' or a timm backbone name for images"]
    assert not (tmp_path / "res").exists()
