"""Every family learns the synthetic faces above the label prior on held-out subjects: the six
families on synthetic Aff-Wild2 (P_MTL against the best constant predictor, and VA CCC > 0),
mtt and mtca on synthetic BP4D (AU BCE against the training label prior), and mtt/mtca through
the training CLI on DISFA, CelebA and toy. Tiny: 32 px, tiny_cnn,
d = 32; each fit takes about 10 s on one core."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monet.config import TrainConfig
from monet.data import load_dataset
from monet.data.synthetic import write_synthetic
from monet.metrics import compute_metrics
from monet.train import fit

SMALL = dict(backbone="tiny_cnn", image_size=32, epochs=10, batch_size=32, d_model=32, heads=4,
             n_x=1, n_t=1, n_d=2, knn=4, M=4, k=2, L=2, hidden=32, head_width=32,
             bias_init=True, tensorboard=False, seed=0)
LR = {"mtca": 3e-3}                       # the rest at 1e-3


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    d = tmp_path_factory.mktemp("learn")
    write_synthetic("affwild2", d / "affwild2", subjects=24, frames=50, size=32, seed=0)
    write_synthetic("bp4d", d / "bp4d", subjects=24, frames=50, size=32, seed=0)
    return d


def constant_predictions(b) -> torch.Tensor:
    """The label prior as a predictor on the test split: binary -> all positive (the best constant
    F1); expression -> the majority training class; VA -> the training mean."""
    ytr, mtr = b.train.y, b.train.mask
    out = torch.zeros(len(b.test), sum(b.spec.out_dims))
    for j, (t, o) in enumerate(zip(b.spec.tasks, b.spec.offsets)):
        keep = mtr[:, j] > 0
        if t.kind == "binary":
            out[:, o] = 1.0
        elif t.kind == "multiclass":
            counts = torch.bincount(ytr[keep, j].long(), minlength=t.num_classes)
            out[:, o + int(counts.argmax())] = 1
        else:
            out[:, o] = ytr[keep, j].mean()
    return out


def test_predictions(model, b) -> torch.Tensor:
    x, _, _ = b.test.batch(torch.arange(len(b.test)))
    with torch.no_grad():
        return model.eval().predict(b.prepare(x, False, None), L=2).float()


test_predictions.__test__ = False


@pytest.mark.parametrize("family", ["vmnc", "vmns", "mrnn", "monet", "mtt", "mtca"])
def test_affwild2_every_family_beats_the_prior(roots, family):
    c = TrainConfig(dataset="affwild2", data_root=str(roots / "affwild2"), family=family,
                    lr=LR.get(family, 1e-3), eval_every=10, **SMALL)
    b = load_dataset(c)
    assert set(b.test.subjects).isdisjoint(set(b.train.subjects) | set(b.val.subjects))
    assert (b.train.mask == 0).any()                     # the synthetic set has missing labels
    model = fit(c, b)["model"]
    got = compute_metrics(test_predictions(model, b), b.test.y, b.test.mask, b.spec)
    prior = compute_metrics(constant_predictions(b), b.test.y, b.test.mask, b.spec)
    assert got["p_mtl"] > prior["p_mtl"] + 0.15, (got["p_mtl"], prior["p_mtl"])
    assert got["mean_ccc"] > 0.05


@pytest.mark.parametrize("family", ["mtt", "mtca"])
def test_bp4d_beats_the_label_prior(roots, family):
    c = TrainConfig(dataset="bp4d", data_root=str(roots / "bp4d"), fold=1, family=family,
                    lr=LR.get(family, 1e-3), eval_every=10, **SMALL)
    b = load_dataset(c)
    model = fit(c, b)["model"]
    p = test_predictions(model, b).clamp(1e-4, 1 - 1e-4)
    y, m = b.test.y, b.test.mask > 0
    prior = b.train.y.mean(0).clamp(1e-3, 1 - 1e-3).expand_as(y)
    bce = F.binary_cross_entropy(p[m], y[m]).item()
    bce_prior = F.binary_cross_entropy(prior[m], y[m]).item()
    assert bce < 0.95 * bce_prior, (bce, bce_prior)
    assert np.isfinite(bce)


@pytest.fixture(scope="module")
def tiny_roots(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    write_synthetic("disfa", d / "disfa", subjects=6, frames=6, size=24)
    write_synthetic("celeba", d / "celeba", subjects=10, frames=3, size=24)
    return d


@pytest.mark.parametrize("family", ["mtt", "mtca"])
@pytest.mark.parametrize("ds,extra", [("disfa", ["--fold", "2"]),
                                      ("celeba", ["--subset", "haircut"]),
                                      ("toy", ["--T", "3", "--n-train", "64"])])
def test_train_cli_runs_on_every_dataset(tiny_roots, tmp_path, family, ds, extra, capsys):
    from monet.train import main

    root = [] if ds == "toy" else ["--data-root", str(tiny_roots / ds), "--backbone", "tiny_cnn",
                                   "--image-size", "24"]
    rc = main(["--dataset", ds, "--family", family, "--epochs", "1", "--batch-size", "8",
               "--d-model", "16", "--heads", "4", "--n-x", "1", "--n-t", "1", "--n-d", "1",
               "--knn", "2", "--tensorboard", "false", "--quiet", "--out", str(tmp_path / "r")]
              + root + extra)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "mean F1" in text and (tmp_path / "r" / "checkpoint" / "checkpoint.pt").is_file()
