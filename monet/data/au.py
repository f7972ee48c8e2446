"""BP4D and DISFA action-unit detection, in the layouts users already have (DESIGN.md §8).

Protocols: BP4D, F1 on AUs 1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24; DISFA, F1 on AUs 1, 2, 4,
6, 9, 12, 25, 26 with intensity >= 2 positive; both subject-exclusive 3-fold cross-validation.
``config.fold`` is the TEST fold; the search's validation split is a seeded share
(``config.val_subjects``) of the training subjects (seed ``config.data_seed`` or ``config.seed``).

Layouts under ``--data-root`` (``config.layout``; ``auto`` picks the first one present):

* ``graphau`` (ME-GraphAU): ``list/{BP4D,DISFA}_{train,test}_img_path_fold{n}.txt`` (one image
  path per line, e.g. ``F001/T1/2440.jpg``, ``SN001/0.png``) and ``..._label_fold{n}.txt`` (one
  line of space-separated 0/1 per image, one column per protocol AU).
* ``jaanet`` (JAA-Net): ``list/{DS}_part{p}_path.txt`` + ``list/{DS}_part{p}_AUoccur.txt``.
  Fold n tests on part ``TEST_PART_OF_FOLD[n]`` (fold 1 -> part 3, 2 -> 2, 3 -> 1, the
  ME-GraphAU numbering) and trains on the other two, so every layout gives the same folds.
* ``raw`` (DISFA only): ``ActionUnit_Labels/SNxxx/SNxxx_au{N}.txt`` (lines ``frame,intensity``,
  intensity 0-5); image ``SNxxx/{i}.png`` for the i-th line (0-based, as ME-GraphAU extracts
  them); the standard 3-part subject partition.

Images are looked up under ``img/``, ``imgs/``, ``images/`` or the root itself. Label value 9
(BP4D's "not coded") marks a missing label; any value other than 0, 1, 9 is an error.
The list files may also sit directly in the root instead of ``list/``.

Example:
    >>> spec_for("disfa").names
    ('AU1', 'AU2', 'AU4', 'AU6', 'AU9', 'AU12', 'AU25', 'AU26')
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from monet.data.bundle import build_bundle
from monet.data.faces import (FACE_FORMATS, FaceFormat, Records, carve_validation,
                              check_subject_exclusive, data_seed, require_root, where)
from monet.errors import ConfigError, DataError
from monet.registry import DATASETS
from monet.tasks import Task, TaskSpec

BP4D_AUS = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
DISFA_ALL_AUS = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)   # the 12 AUs DISFA annotates
DISFA_AUS = (1, 2, 4, 6, 9, 12, 25, 26)                      # the 8 of the protocol
AUS = {"bp4d": BP4D_AUS, "disfa": DISFA_AUS}
MISSING = 9                                                  # BP4D's "not coded"
LAYOUTS = ("auto", "graphau", "jaanet", "raw")

# The standard subject partitions (the ME-GraphAU / JAA-Net part lists).
BP4D_PARTS = (
    ("F001", "M007", "F018", "F008", "F002", "M004", "F010", "F009", "M012", "M001", "F016", "M014",
     "F023", "M008"),
    ("M011", "F003", "M010", "M002", "F005", "F022", "M018", "M017", "F013", "M016", "F020", "F011",
     "M013", "M005"),
    ("F007", "F015", "F006", "F019", "M006", "M009", "F012", "M003", "F004", "F021", "F017", "M015",
     "F014"),
)
DISFA_PARTS = (
    ("SN002", "SN010", "SN001", "SN026", "SN027", "SN032", "SN030", "SN009", "SN016"),
    ("SN013", "SN018", "SN011", "SN028", "SN012", "SN006", "SN031", "SN021", "SN024"),
    ("SN003", "SN029", "SN023", "SN025", "SN008", "SN005", "SN007", "SN017", "SN004"),
)
# ME-GraphAU fold numbering: fold n tests on this part and trains on the two others.
TEST_PART_OF_FOLD = {1: 3, 2: 2, 3: 1}
_SUBJECT_RE = {"bp4d": re.compile(r"^[FM]\d{3}$"), "disfa": re.compile(r"^SN\d{3}$")}


def part_of(subject: str, parts) -> int:
    """1-based part of ``subject`` in a standard partition, 0 when absent."""
    for p, members in enumerate(parts, start=1):
        if subject in members:
            return p
    return 0


def spec_for(ds: str) -> TaskSpec:
    return TaskSpec(tuple(Task(f"AU{a}", "binary", 1, "au") for a in AUS[ds]))


def subject_of(key: str, ds: str, origin) -> str:
    """Subject id from an image path: the component that looks like one (``F001``, ``SN001``),
    else the first folder of the path."""
    parts = [p for p in re.split(r"[\\/]", key) if p]
    for p in parts:
        if _SUBJECT_RE[ds].match(p):
            return p
    if len(parts) >= 2:
        return parts[0]
    raise DataError(f"{where(origin)}: cannot tell the subject of image path {key!r} "
                    f"(expected e.g. {'F001/T1/2440.jpg' if ds == 'bp4d' else 'SN001/0.png'})")


def _read_lines(path: Path) -> list:
    from monet.io import read_text_lines
    return read_text_lines(path, "list or label text file")


def read_list_pair(path_file: Path, label_file: Path, ds: str) -> Records:
    """One image-path list and its label file -> Records (checked line by line)."""
    for f in (path_file, label_file):
        if not f.is_file():
            raise DataError(f"{f}: no such file")
    paths, labels = _read_lines(path_file), _read_lines(label_file)
    if not paths:
        raise DataError(f"{path_file}: empty fold (no image paths)")
    if len(labels) != len(paths):
        raise DataError(f"{label_file}: {len(labels)} label lines but {path_file} has "
                        f"{len(paths)} image paths; expected one label line per image")
    T = len(AUS[ds])
    y = np.zeros((len(paths), T), np.float32)
    for i, (p, ln) in enumerate(zip(paths, labels)):
        if not p:
            raise DataError(f"{path_file}:{i + 1}: empty image path")
        vals = ln.split()
        if len(vals) != T:
            raise DataError(f"{label_file}:{i + 1}: {len(vals)} values; expected {T} "
                            f"(one 0/1 per AU {', '.join(map(str, AUS[ds]))})")
        try:
            y[i] = [int(v) for v in vals]
        except ValueError:
            raise DataError(f"{label_file}:{i + 1}: non-integer label in {ln!r}; expected 0/1 "
                            f"({MISSING} = not coded)") from None
    bad = ~np.isin(y, (0, 1, MISSING))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{label_file}:{r + 1}: AU{AUS[ds][c]} = {int(y[r, c])}; expected 0 or 1 "
                        f"({MISSING} = not coded)")
    mask = (y != MISSING).astype(np.float32)
    y[y == MISSING] = 0
    origin = [(str(path_file), i + 1) for i in range(len(paths))]
    subjects = [subject_of(p, ds, o) for p, o in zip(paths, origin)]
    return Records(paths, y, mask, subjects, origin)


def _list_dir(root: Path, name: str) -> Path:
    for d in (root / "list", root):
        if (d / name).is_file():
            return d
    return root / "list"


def detect_layout(root: Path, ds: str, layout: str = "auto") -> str:
    if layout not in LAYOUTS:
        raise ConfigError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    DS = ds.upper()
    present = {
        "graphau": (_list_dir(root, f"{DS}_train_img_path_fold1.txt")
                    / f"{DS}_train_img_path_fold1.txt").is_file(),
        "jaanet": (_list_dir(root, f"{DS}_part1_path.txt") / f"{DS}_part1_path.txt").is_file(),
        "raw": ds == "disfa" and (root / "ActionUnit_Labels").is_dir(),
    }
    if layout != "auto":
        if layout == "raw" and ds != "disfa":
            raise ConfigError("layout: 'raw' intensity files exist for DISFA only")
        if not present[layout]:
            raise DataError(f"{root}: no {layout} layout for {DS} ({_expected(DS, layout)})")
        return layout
    for name in ("graphau", "jaanet", "raw"):
        if present[name]:
            return name
    raise DataError(f"{root}: no {DS} label files found; expected {_expected(DS, 'graphau')}, "
                    f"or {_expected(DS, 'jaanet')}" + (f", or {_expected(DS, 'raw')}" if ds == "disfa" else ""))


def _expected(DS: str, layout: str) -> str:
    return {"graphau": f"list/{DS}_train_img_path_fold1.txt (ME-GraphAU lists)",
            "jaanet": f"list/{DS}_part1_path.txt (JAA-Net part lists)",
            "raw": "ActionUnit_Labels/SNxxx/SNxxx_auN.txt (DISFA intensity files)"}[layout]


def read_parts(root: Path, ds: str, layout: str) -> dict:
    """Part number (1-3) -> Records for the ``jaanet`` and ``raw`` layouts."""
    DS = ds.upper()
    if layout == "jaanet":
        parts = {}
        for p in (1, 2, 3):
            d = _list_dir(root, f"{DS}_part{p}_path.txt")
            parts[p] = read_list_pair(d / f"{DS}_part{p}_path.txt", d / f"{DS}_part{p}_AUoccur.txt", ds)
        check_subject_exclusive({f"part {p}": r for p, r in parts.items()})
        return parts
    return _read_raw_disfa(root)


def _read_raw_disfa(root: Path) -> dict:
    labels = root / "ActionUnit_Labels"
    found = {1: [], 2: [], 3: []}
    for sdir in sorted(p for p in labels.iterdir() if p.is_dir()):
        sid = sdir.name
        part = part_of(sid, DISFA_PARTS)
        if not part:
            raise DataError(f"{sdir}: subject {sid} is not one of the 27 DISFA subjects of the "
                            "standard 3-fold partition")
        cols, n = [], None
        for au in DISFA_AUS:
            f = sdir / f"{sid}_au{au}.txt"
            if not f.is_file():
                raise DataError(f"{f}: no such file (DISFA intensity file of AU{au})")
            inten = []
            for i, ln in enumerate(_read_lines(f)):
                bits = ln.split(",")
                try:
                    v = int(bits[1])
                    int(bits[0])
                except (IndexError, ValueError):
                    raise DataError(f"{f}:{i + 1}: expected 'frame,intensity', got {ln!r}") from None
                if not 0 <= v <= 5:
                    raise DataError(f"{f}:{i + 1}: intensity {v}; expected 0 to 5")
                inten.append(v)
            if n is None:
                n, first = len(inten), f
            elif len(inten) != n:
                raise DataError(f"{f}: {len(inten)} frames but {first} has {n}; every AU file of "
                                f"{sid} must have one line per frame")
            cols.append(inten)
        if not n:
            raise DataError(f"{sdir / f'{sid}_au1.txt'}: empty (no frames)")
        y = (np.array(cols, np.float32).T >= 2).astype(np.float32)
        origin = [(str(sdir / f"{sid}_au{DISFA_AUS[0]}.txt"), i + 1) for i in range(n)]
        found[part].append(Records([f"{sid}/{i}.png" for i in range(n)], y, np.ones_like(y),
                                   [sid] * n, origin))
    out = {}
    for p, recs in found.items():
        if not recs:
            raise DataError(f"{labels}: empty fold: no subject of part {p} "
                            f"({', '.join(DISFA_PARTS[p - 1])})")
        out[p] = Records.concat(recs)
    return out


def read_fold(root: Path, ds: str, layout: str, fold: int) -> tuple:
    """``(train_pool, test)`` Records of ``fold`` (the test fold)."""
    if int(fold) not in TEST_PART_OF_FOLD:
        raise ConfigError(f"fold: expected 1, 2 or 3 (the test fold), got {fold!r}")
    fold = int(fold)
    DS = ds.upper()
    if layout == "graphau":
        d = _list_dir(root, f"{DS}_train_img_path_fold{fold}.txt")
        train = read_list_pair(d / f"{DS}_train_img_path_fold{fold}.txt",
                               d / f"{DS}_train_label_fold{fold}.txt", ds)
        test = read_list_pair(d / f"{DS}_test_img_path_fold{fold}.txt",
                              d / f"{DS}_test_label_fold{fold}.txt", ds)
        check_subject_exclusive({"train": train, "test": test})
        return train, test
    parts = read_parts(root, ds, layout)
    tp = TEST_PART_OF_FOLD[fold]
    return Records.concat([parts[p] for p in (1, 2, 3) if p != tp]), parts[tp]


def read_all(root: Path, ds: str, layout: str = "auto") -> Records:
    """Every image of the dataset once (for the cache)."""
    root = Path(root)
    layout = detect_layout(root, ds, layout)
    if layout != "graphau":
        return Records.concat(list(read_parts(root, ds, layout).values()))
    recs, seen = [], set()
    for fold in (1, 2, 3):
        for r in read_fold(root, ds, layout, fold):
            keep = [i for i, k in enumerate(r.keys) if k not in seen]
            seen.update(r.keys[i] for i in keep)
            recs.append(r.take(keep))
    return Records.concat(recs)


def load_au(config, ds: str):
    """The BP4D / DISFA :class:`~monet.data.base.DataBundle` of ``config.fold``."""
    root = require_root(config)
    layout = detect_layout(root, ds, config.layout)
    pool, test = read_fold(root, ds, layout, config.fold)
    train, val = carve_validation(pool, config.val_subjects, data_seed(config))
    meta = dict(dataset=ds, layout=layout, fold=int(config.fold), aus=list(AUS[ds]),
                val_subjects=sorted(set(val.subjects)), test_subjects=sorted(set(test.subjects)))
    return build_bundle(ds, spec_for(ds), {"train": train, "val": val, "test": test}, config, root,
                        IMAGE_DIRS, meta)


@DATASETS.register("bp4d")
def load_bp4d(config):
    """BP4D, 12 AUs, subject-exclusive 3-fold protocol (``config.fold`` is the test fold)."""
    return load_au(config, "bp4d")


@DATASETS.register("disfa")
def load_disfa(config):
    """DISFA, 8 AUs (intensity >= 2 positive), subject-exclusive 3-fold protocol."""
    return load_au(config, "disfa")


IMAGE_DIRS = ("img", "imgs", "images", "")
for _ds in ("bp4d", "disfa"):
    FACE_FORMATS.register(_ds)(FaceFormat(
        read_all=lambda root, layout="auto", _ds=_ds: (read_all(root, _ds, layout), Path(root)),
        image_dirs=IMAGE_DIRS))
