"""Face loaders on synthetic data written in the real layouts: protocols, folds, masks, prepare."""
import pickle

import numpy as np
import pytest
import torch

from monet.config import TrainConfig
from monet.data import list_datasets, load_dataset
from monet.data.augment import FacePrepare
from monet.data.celeba import SUBSETS
from monet.data.synthetic import write_synthetic
from monet.metrics import compute_metrics


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    write_synthetic("bp4d", d / "bp4d", subjects=9, frames=4, size=24, layout="all")
    write_synthetic("disfa", d / "disfa", subjects=9, frames=4, size=24, layout="all")
    write_synthetic("celeba", d / "celeba", subjects=10, frames=2, size=24)
    write_synthetic("affwild2", d / "affwild2", subjects=6, frames=20, size=24)
    return d


def cfg(root, ds, **kw):
    kw.setdefault("image_size", 24)
    return TrainConfig(dataset=ds, data_root=str(root / ds), backbone="tiny_cnn", **kw)


def keyset(split):
    return sorted(zip(split.keys, map(tuple, split.y.tolist()), map(tuple, split.mask.tolist())))


def test_registered():
    assert {"bp4d", "disfa", "celeba", "affwild2"} <= set(list_datasets())


def test_bp4d_protocol_folds_and_validation(roots):
    seen_test = set()
    for fold in (1, 2, 3):
        b = load_dataset(cfg(roots, "bp4d", fold=fold, val_subjects=0.34))
        assert b.spec.names == tuple(f"AU{a}" for a in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24))
        assert {t.group for t in b.spec.tasks} == {"au"} and b.input_shape == (3, 24, 24)
        tr, va, te = (set(s.subjects) for s in (b.train, b.val, b.test))
        assert len(te) == 3 and len(va) == 2 and len(tr) == 4          # 34% of 6 training subjects
        assert tr.isdisjoint(va) and tr.isdisjoint(te) and va.isdisjoint(te)
        assert not te & seen_test
        seen_test |= te
        assert b.meta["test_subjects"] == sorted(te) and b.meta["val_subjects"] == sorted(va)
    assert len(seen_test) == 9
    same = load_dataset(cfg(roots, "bp4d", seed=0))
    assert set(same.val.subjects) == set(load_dataset(cfg(roots, "bp4d", seed=0)).val.subjects)
    vals = {tuple(sorted(set(load_dataset(cfg(roots, "bp4d", data_seed=s)).val.subjects)))
            for s in range(6)}
    assert len(vals) > 1                                                # the carve is seeded


@pytest.mark.parametrize("ds,layouts", [("bp4d", ("graphau", "jaanet")),
                                        ("disfa", ("graphau", "jaanet", "raw"))])
def test_every_layout_gives_the_same_folds(roots, ds, layouts):
    for fold in (1, 2, 3):
        bundles = [load_dataset(cfg(roots, ds, layout=lay, fold=fold)) for lay in layouts]
        for split in ("train", "val", "test"):
            ref = keyset(getattr(bundles[0], split))
            assert all(keyset(getattr(b, split)) == ref for b in bundles[1:]), (fold, split)


def test_disfa_protocol_is_intensity_at_least_two(roots):
    b = load_dataset(cfg(roots, "disfa", layout="raw"))
    assert b.spec.names == ("AU1", "AU2", "AU4", "AU6", "AU9", "AU12", "AU25", "AU26")
    k = b.test.keys[1]                         # e.g. SN003/1.png: line 2 of the intensity files
    sid, i = k.split("/")[0], int(k.split("/")[1].split(".")[0])
    for j, au in enumerate((1, 2, 4, 6, 9, 12, 25, 26)):
        f = roots / "disfa" / "ActionUnit_Labels" / sid / f"{sid}_au{au}.txt"
        inten = int(f.read_text().splitlines()[i].split(",")[1])
        assert b.test.y[1, j].item() == float(inten >= 2)


def test_celeba_subsets_partition_and_labels(roots):
    for subset, names in SUBSETS.items():
        b = load_dataset(cfg(roots, "celeba", subset=subset))
        assert b.spec.names == names and {t.group for t in b.spec.tasks} == {"attr"}
        assert (len(b.train), len(b.val), len(b.test)) == (16, 2, 2)
    lines = (roots / "celeba" / "list_attr_celeba.txt").read_text().splitlines()
    header = lines[1].split()
    b = load_dataset(cfg(roots, "celeba", subset="gender"))
    row = {ln.split()[0]: ln.split()[1:] for ln in lines[2:]}[b.test.keys[0]]
    assert b.test.y[0].tolist() == [float(row[header.index(a)] == "1") for a in SUBSETS["gender"]]
    assert SUBSETS["beauty"] == ("Arched_Eyebrows", "Attractive", "High_Cheekbones", "Rosy_Cheeks",
                                 "Oval_Face")


def test_affwild2_markers_become_masks(roots):
    b = load_dataset(cfg(roots, "affwild2"))
    spec = b.spec
    assert spec.T == 15 and spec.tasks[12].kind == "multiclass" and spec.tasks[12].num_classes == 8
    assert [t.kind for t in spec.tasks[13:]] == ["regression"] * 2 and spec.groups == ("au", "expr", "va")
    lines = (roots / "affwild2" / "validation_set_annotations.txt").read_text().splitlines()[1:]
    assert len(b.test) == len(lines) and b.test.keys == [ln.split(",")[0] for ln in lines]
    lines += (roots / "affwild2" / "training_set_annotations.txt").read_text().splitlines()[1:]
    by_key = {ln.split(",")[0]: ln.split(",") for ln in lines}
    rows = [by_key[k] for s in (b.train, b.val, b.test) for k in s.keys]
    assert len(rows) == len(lines)
    m = torch.cat([b.train.mask, b.val.mask, b.test.mask]).numpy()
    y = torch.cat([b.train.y, b.val.y, b.test.y]).numpy()
    assert (m[:, 13] == 0).sum() == sum(r[1] == "-5" for r in rows) > 0
    assert (m[:, 12] == 0).sum() == sum(r[3] == "-1" for r in rows) > 0
    assert (m[:, :12] == 0).sum() == sum(r[4] == "-1" for r in rows) * 12 > 0
    i = next(i for i, r in enumerate(rows) if r[1] != "-5")
    assert y[i, 13] == pytest.approx(float(rows[i][1])) and y[i, 14] == pytest.approx(float(rows[i][2]))
    i = next(i for i, r in enumerate(rows) if r[3] != "-1")
    assert y[i, 12] == int(rows[i][3]) and list(y[i, :12]) == [float(v) for v in rows[i][4:]]
    assert set(b.val.subjects).isdisjoint(b.train.subjects)
    # the protocol metric P_MTL = mean AU F1 + mean expression F1 + mean CCC
    pred = torch.cat([b.test.y[:, :12], torch.nn.functional.one_hot(b.test.y[:, 12].long(), 8).float(),
                      b.test.y[:, 13:]], 1)
    met = compute_metrics(pred, b.test.y, b.test.mask, spec)
    assert met["mean_ccc"] == pytest.approx(1.0, abs=1e-6)
    assert met["p_mtl"] == pytest.approx(met["mean_f1/au"] + met["mean_f1/expr"] + 1.0, abs=1e-6)
    assert met["acc/expr"] == 1.0 and all(met[f"acc/{t.name}"] == 1.0 for t in spec.tasks[:12])


def test_split_batch_items_and_pickling(roots):
    b = load_dataset(cfg(roots, "bp4d", num_workers=2))
    x, y, m = b.train.batch(torch.tensor([3, 0, 5]))
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 24, 24)
    for j, i in enumerate((3, 0, 5)):
        xi, yi, mi = b.train[i]
        assert torch.equal(xi, x[j]) and torch.equal(yi, y[j]) and torch.equal(mi, m[j])
    clone = pickle.loads(pickle.dumps(b.train))
    assert torch.equal(clone.batch([1])[0], b.train.batch([1])[0])
    loader = torch.utils.data.DataLoader(b.train, batch_size=4, num_workers=0)
    assert next(iter(loader))[0].shape == (4, 3, 24, 24)
    assert b.label_matrix("train")[0].shape == (len(b.train), 12)


def test_prepare_normalises_and_augments_reproducibly():
    x = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    prep = FacePrepare((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), augment=True)
    plain = prep(x, False, None)
    assert torch.allclose(plain, (x.float() / 255 - 0.5) / 0.25, atol=1e-5)
    a1 = prep(x, True, torch.Generator().manual_seed(1))
    a2 = prep(x, True, torch.Generator().manual_seed(1))
    assert torch.equal(a1, a2) and not torch.allclose(a1, plain)
    flip_only = FacePrepare((0.5,) * 3, (0.25,) * 3, augment=True, rotate=0.0, zoom=0.0)
    out = flip_only(x, True, torch.Generator().manual_seed(0))
    for i in range(4):   # each image is either unchanged or mirrored
        assert torch.allclose(out[i], plain[i], atol=1e-4) or torch.allclose(out[i], plain[i].flip(-1), atol=1e-4)
    assert not FacePrepare(augment=False)(x, True, torch.Generator()).equal(plain)  # ImageNet stats
    assert pickle.loads(pickle.dumps(prep)).mean == (0.5, 0.5, 0.5)


def test_image_size_defaults_to_the_backbone(roots):
    c = TrainConfig(dataset="bp4d", data_root=str(roots / "bp4d"), backbone="tiny_cnn")
    assert load_dataset(c).input_shape == (3, 64, 64)
    c = TrainConfig(dataset="bp4d", data_root=str(roots / "bp4d"), backbone="inception_v3")
    b = load_dataset(c)
    assert b.input_shape == (3, 299, 299) and b.prepare.mean == (0.5, 0.5, 0.5)
    assert b.train.batch([0])[0].shape == (1, 3, 299, 299)
    assert np.isfinite(b.prepare(b.train.batch([0])[0], False, None).numpy()).all()
