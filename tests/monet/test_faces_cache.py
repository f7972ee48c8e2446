"""The uint8 face cache: same pixels as the folders, resumable, checked when reopened."""
import json
import pickle

import numpy as np
import pytest
import torch

from monet.config import TrainConfig
from monet.data import load_dataset
from monet.data.cache import FaceCache, build_cache, main as cache_main
from monet.data.synthetic import write_synthetic
from monet.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    write_synthetic("bp4d", d / "bp4d", subjects=6, frames=5, size=40)
    return d / "bp4d"


def cfg(root, **kw):
    return TrainConfig(dataset="bp4d", data_root=str(root), backbone="tiny_cnn", **kw)


def test_cache_matches_folder_pixels_and_training_reads_it(root, tmp_path, capsys):
    assert cache_main(["--dataset", "bp4d", "--data-root", str(root), "--size", "24",
                       "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert "30 images of 3x24x24" in capsys.readouterr().out
    c = FaceCache.open(tmp_path / "c")
    assert (c.count, c.size) == (30, 24) and len(set(c.keys)) == 30
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["complete"] and meta["done"] == 30
    assert (tmp_path / "c" / "images.u8").stat().st_size == 30 * 3 * 24 * 24
    cached = load_dataset(cfg(root, cache=str(tmp_path / "c")))
    folder = load_dataset(cfg(root, image_size=24))
    assert cached.input_shape == (3, 24, 24) and cached.meta["images"] == "cache"
    for split in ("train", "val", "test"):
        a, b = getattr(cached, split), getattr(folder, split)
        idx = torch.arange(len(a)).flip(0)
        xa, ya, ma = a.batch(idx)
        xb, yb, mb = b.batch(idx)
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ma, mb)
        assert torch.equal(a[1][0], xb[len(a) - 2])
    clone = pickle.loads(pickle.dumps(cached.train))        # DataLoader workers reopen the memmap
    assert clone.source._arr is None and torch.equal(clone.batch([2])[0], cached.train.batch([2])[0])
    with pytest.raises(ConfigError, match=r"image_size: 32 px but the cache .* holds 24 px"):
        load_dataset(cfg(root, cache=str(tmp_path / "c"), image_size=32))


def test_resume_after_interruption_gives_the_same_cache(root, tmp_path):
    full = build_cache("bp4d", root, 16, tmp_path / "full", progress=False)
    assert build_cache("bp4d", root, 16, tmp_path / "part", chunk=8, progress=False,
                       stop_after=8) is None
    meta = json.loads((tmp_path / "part" / "meta.json").read_text())
    assert meta["done"] == 8 and not meta["complete"]
    assert (tmp_path / "part" / "images.u8.partial").is_file()
    assert not (tmp_path / "part" / "images.u8").exists()
    with pytest.raises(DataError, match=r"cache incomplete \(8 of 30 images\); rerun"):
        FaceCache.open(tmp_path / "part")
    resumed = build_cache("bp4d", root, 16, tmp_path / "part", chunk=8, progress=False)
    a = np.fromfile(tmp_path / "full" / "images.u8", np.uint8)
    b = np.fromfile(tmp_path / "part" / "images.u8", np.uint8)
    assert resumed.count == full.count == 30 and np.array_equal(a, b)
    assert resumed.keys == full.keys


def test_reopen_checks_size_and_count(root, tmp_path, capsys):
    build_cache("bp4d", root, 16, tmp_path / "c", progress=False)
    arr = tmp_path / "c" / "images.u8"
    data = arr.read_bytes()
    arr.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"images.u8: 22940 bytes; expected 23040 \(30 images of 3x16x16\)"):
        FaceCache.open(tmp_path / "c")
    arr.write_bytes(data)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    (tmp_path / "c" / "meta.json").write_text(json.dumps({**meta, "count": 31}))
    with pytest.raises(DataError, match=r"expected 23808 \(31 images of 3x16x16\)"):
        FaceCache.open(tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    assert cache_main(["--dataset", "bp4d", "--data-root", str(root), "--size", "24",
                       "--out", str(tmp_path / "c"), "--no-progress"]) == 2
    assert "holds a different cache (bp4d, 16 px, 30 images)" in capsys.readouterr().err
    with pytest.raises(DataError, match=r"not a face cache"):
        FaceCache.open(tmp_path)


@pytest.mark.parametrize("ds", ["celeba", "affwild2", "disfa"])
def test_cache_other_datasets(tmp_path, ds):
    write_synthetic(ds, tmp_path / ds, subjects=3, frames=4, size=20,
                    **({"layout": "raw"} if ds == "disfa" else {}))
    c = build_cache(ds, tmp_path / ds, 16, tmp_path / "c", progress=False)
    assert c.count == 12
    b = load_dataset(TrainConfig(dataset=ds, data_root=str(tmp_path / ds), backbone="tiny_cnn",
                                 cache=str(tmp_path / "c"), val_subjects=0.5))
    f = load_dataset(TrainConfig(dataset=ds, data_root=str(tmp_path / ds), backbone="tiny_cnn",
                                 image_size=16, val_subjects=0.5))
    assert torch.equal(b.test.batch([0, 1])[0], f.test.batch([0, 1])[0])


def test_key_missing_from_cache_names_the_label_line(root, tmp_path):
    import shutil
    other = tmp_path / "bp4d"
    shutil.copytree(root, other)
    build_cache("bp4d", other, 16, tmp_path / "c", progress=False)
    lst = other / "list" / "BP4D_test_img_path_fold1.txt"
    lines = lst.read_text().splitlines()
    new = lines[0].replace(".jpg", "_x.jpg")
    (other / "img" / lines[0]).rename(other / "img" / new)
    lst.write_text("\n".join([new] + lines[1:]) + "\n")
    with pytest.raises(DataError, match=rf"BP4D_test_img_path_fold1.txt:1: image {new} is not in the cache"):
        load_dataset(cfg(other, cache=str(tmp_path / "c")))
