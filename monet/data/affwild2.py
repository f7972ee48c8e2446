"""Aff-Wild2 multi-task (ABAW MTL challenge; papers 002 and 003): 12 AUs, 8 expressions, valence
and arousal, with the challenge's missing-label markers turned into masks.

Files under ``--data-root``: the annotation files ``training_set_annotations.txt`` and
``validation_set_annotations.txt`` (ABAW4 s-Aff-Wild2 names; ABAW3's ``train_set.txt`` /
``validation_set.txt`` and an ``MTL_Challenge/`` or ``annotations/`` sub-folder are accepted
too) and the images in ``cropped_aligned/`` (or ``images/``, or the root). Each file starts with
the header ``image,valence,arousal,expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26``
and has one line per frame, e.g. ``video1/00001.jpg,0.25,-0.1,4,0,0,0,1,0,1,1,0,0,0,1,0``.
Missing labels: valence/arousal ``-5``, expression ``-1``, AU ``-1``; they get mask 0.
Allowed values otherwise: valence/arousal in [-1, 1], expression 0-7 (Neutral, Anger, Disgust,
Fear, Happiness, Sadness, Surprise, Other), AU 0/1.

Splits: the challenge's test labels are not public, so ``test`` is the official validation set;
``val`` is a seeded, subject-exclusive share (``config.val_subjects``) of the training videos
(a video's ``_left`` / ``_right`` crops count as one subject group). Tasks: ``AU1`` ... ``AU26``
(binary, group ``au``), ``expr`` (multiclass, 8 classes, group ``expr``), ``valence`` and
``arousal`` (regression, group ``va``); metrics include ``p_mtl`` = mean AU F1 + mean expression
F1 + mean CCC.

Example:
    >>> spec().names[-3:], spec().tasks[12].num_classes
    (('expr', 'valence', 'arousal'), 8)
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from monet.data.bundle import build_bundle
from monet.data.faces import (FACE_FORMATS, FaceFormat, Records, carve_validation,
                              check_subject_exclusive, data_seed, require_root)
from monet.errors import DataError
from monet.registry import DATASETS
from monet.tasks import Task, TaskSpec

AFFWILD2_AUS = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)
EXPRESSIONS = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
HEADER = "image,valence,arousal,expression," + ",".join(f"AU{a}" for a in AFFWILD2_AUS)
TRAIN_FILES = ("training_set_annotations.txt", "train_set.txt")
VALID_FILES = ("validation_set_annotations.txt", "validation_set.txt")
SUBDIRS = ("", "annotations", "MTL_Challenge", "MTL")
VA_MISSING, EXPR_MISSING, AU_MISSING = -5.0, -1, -1


def spec() -> TaskSpec:
    return TaskSpec(tuple([Task(f"AU{a}", "binary", 1, "au") for a in AFFWILD2_AUS]
                          + [Task("expr", "multiclass", len(EXPRESSIONS), "expr"),
                             Task("valence", "regression", 1, "va"),
                             Task("arousal", "regression", 1, "va")]))


def video_of(key: str) -> str:
    """Subject group of an image path: its video folder without a ``_left`` / ``_right`` suffix."""
    parts = [p for p in re.split(r"[\\/]", key) if p]
    video = parts[-2] if len(parts) >= 2 else parts[0].rsplit("_", 1)[0]
    return re.sub(r"_(left|right)$", "", video)


def _whole(t: str) -> int:
    """``'1'`` or ``'1.0'`` -> 1; ``'1.5'``, ``'nan'``, text -> ValueError (never truncated)."""
    f = float(t)
    if not math.isfinite(f) or f != int(f):
        raise ValueError(t)
    return int(f)


def read_annotations(path: Path) -> Records:
    """One MTL annotation file -> Records (labels ``[N, 15]``: 12 AUs, expr, valence, arousal)."""
    from monet.io import read_text_lines
    lines = read_text_lines(path, "Aff-Wild2 annotation text file")
    if not lines or not lines[0].lower().startswith("image,"):
        raise DataError(f"{path}:1: expected the header {HEADER!r}")
    head = lines[0].split(",")
    if len(head) != 4 + len(AFFWILD2_AUS):
        raise DataError(f"{path}:1: header has {len(head)} columns; expected {4 + len(AFFWILD2_AUS)} "
                        f"({HEADER})")
    rows = lines[1:]
    if not rows:
        raise DataError(f"{path}: empty fold (no frames)")
    T = len(AFFWILD2_AUS) + 3
    y = np.zeros((len(rows), T), np.float32)
    mask = np.ones((len(rows), T), np.float32)
    keys = []
    for i, ln in enumerate(rows):
        n = i + 2
        r = ln.split(",")
        if len(r) != len(head):
            raise DataError(f"{path}:{n}: {len(r)} fields; expected {len(head)} ({HEADER})")
        keys.append(r[0])
        try:
            v, a, e = float(r[1]), float(r[2]), _whole(r[3])
            aus = [_whole(t) for t in r[4:]]
        except ValueError:
            raise DataError(f"{path}:{n}: non-numeric label in {ln[:80]!r}; expected valence, "
                            f"arousal in [-1, 1] (-5 missing), expression 0..7 (-1), AUs 0/1 (-1)") \
                from None
        for name, val in (("valence", v), ("arousal", a)):
            if val != VA_MISSING and not -1.0 <= val <= 1.0:
                raise DataError(f"{path}:{n}: {name} = {val}; expected a value in [-1, 1] or -5 (missing)")
        if not (e == EXPR_MISSING or 0 <= e < len(EXPRESSIONS)):
            raise DataError(f"{path}:{n}: expression = {r[3]}; expected 0 to 7 or -1 (missing)")
        for j, t in enumerate(aus):
            if t not in (0, 1, AU_MISSING):
                raise DataError(f"{path}:{n}: AU{AFFWILD2_AUS[j]} = {r[4 + j]}; expected 0, 1 or -1 (missing)")
        au = np.array(aus, np.float32)
        y[i, :12] = np.maximum(au, 0)
        mask[i, :12] = au != AU_MISSING
        y[i, 12], mask[i, 12] = max(e, 0), e != EXPR_MISSING
        for j, val in ((13, v), (14, a)):
            y[i, j], mask[i, j] = (0.0, 0.0) if val == VA_MISSING else (val, 1.0)
    origin = [(str(path), i + 2) for i in range(len(rows))]
    return Records(keys, y, mask, [video_of(k) for k in keys], origin)


def _find(root: Path, names) -> Path:
    for sub in SUBDIRS:
        for n in names:
            p = (root / sub / n) if sub else (root / n)
            if p.is_file():
                return p
    raise DataError(f"{root}: no Aff-Wild2 annotation file (looked for {' or '.join(names)} in "
                    f"{', '.join(s or '.' for s in SUBDIRS)})")


def read_splits(root: Path) -> tuple:
    train = read_annotations(_find(root, TRAIN_FILES))
    valid = read_annotations(_find(root, VALID_FILES))
    check_subject_exclusive({"training set": train, "validation set": valid})
    return train, valid


def read_all(root) -> tuple:
    root = Path(root)
    return Records.concat(list(read_splits(root))), root


@DATASETS.register("affwild2")
def load_affwild2(config):
    """The Aff-Wild2 multi-task :class:`~monet.data.base.DataBundle`."""
    root = require_root(config)
    pool, test = read_splits(root)
    train, val = carve_validation(pool, config.val_subjects, data_seed(config))
    meta = dict(dataset="affwild2", expressions=list(EXPRESSIONS), aus=list(AFFWILD2_AUS),
                val_subjects=sorted(set(val.subjects)), test="official validation set")
    return build_bundle("affwild2", spec(), {"train": train, "val": val, "test": test}, config,
                        root, IMAGE_DIRS, meta)


IMAGE_DIRS = ("cropped_aligned", "images", "")
FACE_FORMATS.register("affwild2")(FaceFormat(read_all=lambda root, layout="auto": read_all(root),
                                             image_dirs=IMAGE_DIRS))
