"""Synthetic faces: layouts, determinism, realistic co-occurrence, labels that change pixels."""
import hashlib
from pathlib import Path

import numpy as np
import pytest

from monet.data import synthetic as S
from monet.data.au import BP4D_PARTS, TEST_PART_OF_FOLD


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_bp4d_default_writes_graphau_lists_with_three_subject_exclusive_folds(tmp_path):
    info = S.write_synthetic("bp4d", tmp_path / "d", subjects=6, frames=4, size=32)
    assert info["images"] == 24 and info["layout"] == "graphau"
    lst = tmp_path / "d" / "list"
    assert sorted(p.name for p in lst.iterdir()) == sorted(
        f"BP4D_{s}_{k}_fold{n}.txt" for s in ("train", "test") for k in ("img_path", "label")
        for n in (1, 2, 3))
    test_subjects = []
    for fold in (1, 2, 3):
        test = (lst / f"BP4D_test_img_path_fold{fold}.txt").read_text().split()
        train = (lst / f"BP4D_train_img_path_fold{fold}.txt").read_text().split()
        labels = (lst / f"BP4D_test_label_fold{fold}.txt").read_text().splitlines()
        assert len(labels) == len(test) and all(len(ln.split()) == 12 for ln in labels)
        subj = {p.split("/")[0] for p in test}
        assert subj.isdisjoint({p.split("/")[0] for p in train})
        # the standard partition: fold n tests on part TEST_PART_OF_FOLD[n]
        assert subj <= set(BP4D_PARTS[TEST_PART_OF_FOLD[fold] - 1])
        assert len(train) + len(test) == 24
        test_subjects += sorted(subj)
        assert all((tmp_path / "d" / "img" / p).is_file() for p in test)
    assert sorted(test_subjects) == sorted(info["subjects"])   # each subject tested exactly once


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    S.write_synthetic("disfa", tmp_path / "a", subjects=3, frames=3, size=24, layout="all")
    S.write_synthetic("disfa", tmp_path / "b", subjects=3, frames=3, size=24, layout="all")
    S.write_synthetic("disfa", tmp_path / "c", subjects=3, frames=3, size=24, layout="all", seed=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")
    raw = (tmp_path / "a" / "ActionUnit_Labels" / "SN002" / "SN002_au12.txt").read_text().splitlines()
    assert [ln.split(",")[0] for ln in raw] == ["1", "2", "3"]
    assert all(0 <= int(ln.split(",")[1]) <= 5 for ln in raw)


def test_au_cooccurrence_is_realistic():
    rng = np.random.default_rng(0)
    on = []
    for _ in range(40):   # 40 subjects, 200 frames each
        prof = S._subject_profile(rng)
        on.append(S.sample_aus(rng, S._emotion_sequence(rng, prof["mix"], 200), prof["au_shift"]))
    on = np.concatenate(on)
    col = {a: on[:, S.ALL_AUS.index(a)] for a in S.ALL_AUS}

    def cond(a, b):  # P(a | b)
        return col[a][col[b]].mean()
    assert cond(2, 1) > 2 * col[2].mean()           # AU1 with AU2
    assert cond(12, 6) > 2 * col[12].mean()         # AU6 with AU12
    both = (col[1] & col[4]).mean()
    assert both < 0.5 * col[1].mean() * col[4].mean() + 1e-9 or both < 0.01   # rarely together
    rates = np.stack([o.mean(0) for o in np.split(on, 40)])
    assert rates.std(0).mean() > 0.03               # subjects have their own base rates


def test_labels_change_visible_geometry():
    prof = S._subject_profile(np.random.default_rng(3))
    W = 64

    def img(au):
        return np.asarray(S.draw_face(prof, au, {}, (W, W), np.random.default_rng(7)), np.int16)
    base, smile, brows = img({}), img({12: 1.0}), img({1: 1.0, 2: 1.0})
    upper, lower = slice(0, int(0.5 * W)), slice(int(0.62 * W), W)
    # AU12 moves the lip corners (lower face), AU1+2 the brows (upper face)
    assert np.abs(smile - base)[upper].sum() < np.abs(smile - base)[lower].sum() / 10
    assert np.abs(smile - base)[lower].max() > 30
    assert np.abs(brows - base)[upper].max() > 30
    assert np.abs(brows - base)[lower].sum() < np.abs(brows - base)[upper].sum() / 5


def test_celeba_and_affwild2_layouts(tmp_path):
    S.write_synthetic("celeba", tmp_path / "c", subjects=5, frames=2, size=32)
    lines = (tmp_path / "c" / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == "10" and len(lines[1].split()) == 40 and len(lines) == 12
    assert set(" ".join(lines[2:]).split()[1::1]) - {f"{i:06d}.jpg" for i in range(1, 11)} <= {"-1", "1"}
    from PIL import Image
    assert Image.open(tmp_path / "c" / "img_align_celeba" / "000001.jpg").size == (32, 39)
    S.write_synthetic("affwild2", tmp_path / "a", subjects=4, frames=30, size=32)
    ann = (tmp_path / "a" / "training_set_annotations.txt").read_text().splitlines()
    assert ann[0] == ("image,valence,arousal,expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,"
                      "AU24,AU25,AU26")
    rows = [ln.split(",") for ln in ann[1:]]
    assert all(len(r) == 16 for r in rows)
    assert any(r[1] == "-5" for r in rows) and any(r[3] == "-1" for r in rows)


def test_cli_exit_codes_and_nothing_half_written(tmp_path, capsys):
    out = tmp_path / "bp4d"
    assert S.main(["--format", "bp4d", "--out", str(out), "--subjects", "3", "--frames", "2",
                   "--size", "24"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert S.main(["--format", "bp4d", "--out", str(out), "--subjects", "3"]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert S.main(["--format", "bp4d", "--out", str(tmp_path / "x"), "--subjects", "2"]) == 2
    assert "needs 3 to 41 subjects" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bp4d"]   # no temp folders left
    with pytest.raises(SystemExit):
        S.main(["--format", "nope", "--out", str(tmp_path / "y")])
