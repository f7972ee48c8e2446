"""End to end on synthetic faces: a small CNN learns them (beats the label prior on held-out
subjects), and ``python -m monet.train`` runs every family on BP4D and DISFA, CelebA, Aff-Wild2."""
import json

import numpy as np
import pytest
import torch

from monet.config import TrainConfig
from monet.data import load_dataset
from monet.data.synthetic import write_synthetic
from monet.metrics import f1_binary
from monet.train import fit, main as train_main


def test_small_cnn_beats_the_label_prior_on_held_out_subjects(tmp_path):
    root = tmp_path / "bp4d"
    write_synthetic("bp4d", root, subjects=24, frames=50, size=40, seed=0)
    c = TrainConfig(dataset="bp4d", data_root=str(root), fold=1, backbone="tiny_cnn", image_size=40,
                    family="vmnc", epochs=10, batch_size=32, lr=3e-3, lr_decay=0.95,
                    bias_init=True, tensorboard=False, seed=0)
    b = load_dataset(c)
    assert set(b.test.subjects).isdisjoint(set(b.train.subjects) | set(b.val.subjects))
    model = fit(c, b)["model"].eval()
    x, y, _ = b.test.batch(torch.arange(len(b.test)))
    with torch.no_grad():
        p = model.predict(b.prepare(x, False, None), L=1).float().clamp(1e-4, 1 - 1e-4)
    prior = b.train.y.mean(0).clamp(1e-3, 1 - 1e-3).expand_as(y)

    def bce(q):
        return torch.nn.functional.binary_cross_entropy(q, y).item()
    f1 = np.mean([f1_binary((p[:, j] >= 0.5).int().numpy(), y[:, j].int().numpy())
                  for j in range(y.shape[1])])
    f1_const = np.mean([f1_binary(np.ones(len(y), int), y[:, j].int().numpy())   # best constant
                        for j in range(y.shape[1])])
    assert bce(p) < 0.9 * bce(prior)
    assert f1 > f1_const


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    write_synthetic("bp4d", d / "bp4d", subjects=6, frames=6, size=24)
    write_synthetic("disfa", d / "disfa", subjects=6, frames=6, size=24)
    write_synthetic("celeba", d / "celeba", subjects=10, frames=3, size=24)
    write_synthetic("affwild2", d / "affwild2", subjects=4, frames=12, size=24)
    return d


COMMON = ["--backbone", "tiny_cnn", "--image-size", "24", "--epochs", "1", "--batch-size", "8",
          "--M", "6", "--k", "3", "--L", "2", "--tensorboard", "false", "--quiet"]


@pytest.mark.parametrize("family", ["monet", "vmnc", "vmns", "mrnn"])
def test_train_cli_bp4d_every_family(roots, tmp_path, family, capsys):
    out = tmp_path / family
    rc = train_main(["--dataset", "bp4d", "--data-root", str(roots / "bp4d"), "--family", family,
                     "--fold", "1", "--augment", "true", "--out", str(out)] + COMMON)
    text = capsys.readouterr().out
    assert rc == 0
    for au in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24):
        assert f"AU{au}  acc" in text
    assert "mean F1" in text
    assert {"config.yaml", "metrics.jsonl", "checkpoint", "test_metrics.yaml"} <= {p.name for p in out.iterdir()}
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val/f1/AU12" in last and "val/mean_f1" in last


@pytest.mark.parametrize("ds,extra", [("disfa", ["--fold", "2"]), ("celeba", ["--subset", "haircut"]),
                                      ("affwild2", [])])
def test_train_cli_other_datasets(roots, tmp_path, ds, extra, capsys):
    family = "vmnc" if ds == "affwild2" else "monet"   # sequential families need binary tasks
    rc = train_main(["--dataset", ds, "--data-root", str(roots / ds), "--family", family,
                     "--out", str(tmp_path / ds)] + extra + COMMON)
    text = capsys.readouterr().out
    assert rc == 0, text
    if ds == "disfa":
        assert "AU26  acc" in text and "AU9  acc" in text
    if ds == "celeba":
        assert "Gray_Hair  acc" in text
    if ds == "affwild2":
        assert "valence  ccc" in text and "P_MTL" in text and "expr  acc" in text


def test_train_with_cache(roots, tmp_path, capsys):
    from monet.data.cache import build_cache
    build_cache("bp4d", roots / "bp4d", 24, tmp_path / "cache", progress=False)
    rc = train_main(["--dataset", "bp4d", "--data-root", str(roots / "bp4d"), "--family", "vmnc",
                     "--cache", str(tmp_path / "cache"), "--augment", "true"] + COMMON[:2] + COMMON[4:])
    assert rc == 0 and "mean F1" in capsys.readouterr().out
