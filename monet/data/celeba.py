"""CelebA attributes: the five 5-attribute subsets of MONET §4.1 (names as in its Table 3).

Files under ``--data-root`` (the official release's layout, or the same files in one folder):
``img_align_celeba/`` (or ``Img/img_align_celeba/``), ``list_attr_celeba.txt`` (or
``Anno/...``: a count line, the 40 attribute names, then ``000001.jpg -1 1 ...``) and
``list_eval_partition.txt`` (or ``Eval/...``: ``000001.jpg 0``; 0 train, 1 val, 2 test).
Labels are -1/1 (any other value is an error naming file, line and attribute); they become 0/1.
``config.subset`` picks the subset; accuracy is the protocol metric.

Example:
    >>> SUBSETS["gender"]
    ('Heavy_Makeup', 'Male', 'Mustache', 'No_Beard', 'Wearing_Lipstick')
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from monet.data.bundle import build_bundle
from monet.data.faces import FACE_FORMATS, FaceFormat, Records, find_file, require_root
from monet.errors import ConfigError, DataError
from monet.registry import DATASETS
from monet.tasks import Task, TaskSpec

CELEBA_ATTRS = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young")

# MONET Table 3, column for column.
SUBSETS = {
    "gender": ("Heavy_Makeup", "Male", "Mustache", "No_Beard", "Wearing_Lipstick"),
    "accessory": ("Eyeglasses", "Wearing_Earrings", "Wearing_Hat", "Wearing_Necklace",
                  "Wearing_Necktie"),
    "haircut": ("Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"),
    "beauty": ("Arched_Eyebrows", "Attractive", "High_Cheekbones", "Rosy_Cheeks", "Oval_Face"),
    "misc": ("5_o_Clock_Shadow", "Pointy_Nose", "Mouth_Slightly_Open", "Oval_Face", "Young"),
}
ATTR_FILES = ("list_attr_celeba.txt", "Anno/list_attr_celeba.txt")
PARTITION_FILES = ("list_eval_partition.txt", "Eval/list_eval_partition.txt")
SPLITS = {0: "train", 1: "val", 2: "test"}


def read_attributes(path: Path) -> tuple:
    """``(names, keys, values [N, A] in {-1, 1})`` of ``list_attr_celeba.txt``."""
    import pandas as pd

    from monet.io import read_text_lines
    lines = read_text_lines(path, "CelebA attribute text file")   # binary/undecodable: one line
    head = [(lines[0] if lines else "").split(), (lines[1] if len(lines) > 1 else "").split()]
    try:
        count = int(head[0][0])
    except (IndexError, ValueError):
        raise DataError(f"{path}:1: expected the number of images, got {' '.join(head[0])!r}") from None
    names = head[1]
    if not names:
        raise DataError(f"{path}:2: expected the attribute names")
    try:  # fast path (200k lines in about a second); the slow path below names the bad line
        df = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, engine="c",
                         names=["image"] + names, dtype={"image": str})
        vals = df[names].to_numpy()
        ok = vals.dtype.kind == "i" and not df.isna().any().any()
    except (pd.errors.ParserError, ValueError):
        ok = False
    if not ok:
        return _read_attributes_slow(path, names)
    if count != len(df):
        raise DataError(f"{path}:1: says {count} images but the file has {len(df)} image lines")
    if not len(df):
        raise DataError(f"{path}: no images")
    bad = np.argwhere((vals != -1) & (vals != 1))
    if len(bad):
        i, j = bad[0]
        raise DataError(f"{path}:{i + 3}: {names[j]} = {vals[i, j]}; expected -1 or 1")
    return names, df["image"].tolist(), vals.astype(np.int8)


def _read_attributes_slow(path: Path, names: list) -> tuple:
    with open(path) as f:
        rows = [ln.split() for ln in f][2:]
    while rows and not rows[-1]:
        rows.pop()
    A = len(names)
    for i, r in enumerate(rows):
        if len(r) != A + 1:
            raise DataError(f"{path}:{i + 3}: {len(r) - 1} values; expected {A} (one -1/1 per attribute)")
        for j, t in enumerate(r[1:]):
            if t not in ("-1", "1"):
                raise DataError(f"{path}:{i + 3}: {names[j]} = {t}; expected -1 or 1")
    raise DataError(f"{path}: cannot parse the attribute table")  # pragma: no cover


def read_partition(path: Path) -> dict:
    """Image -> ``(partition 0/1/2, line)`` from ``list_eval_partition.txt``."""
    from monet.io import read_text_lines

    out = {}
    for i, ln in enumerate(read_text_lines(path, "CelebA partition text file")):
        r = ln.split()
        if not r:
            continue
        if len(r) != 2 or r[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{i + 1}: expected 'image partition' with partition 0, 1 "
                            f"or 2, got {ln.strip()!r}")
        out[r[0]] = (int(r[1]), i + 1)
    if not out:
        raise DataError(f"{path}: empty partition file")
    return out


def read_all(root, attrs=CELEBA_ATTRS, with_partition: bool = False):
    """All images with the labels of ``attrs`` as ``(Records, image_root)`` (for the cache); with
    ``with_partition`` also the partition of each record."""
    root = Path(root)
    attr_file = find_file(root, ATTR_FILES, "CelebA attribute file")
    names, keys, vals = read_attributes(attr_file)
    missing = [a for a in attrs if a not in names]
    if missing:
        raise DataError(f"{attr_file}:2: no attribute column(s) {missing}")
    cols = [names.index(a) for a in attrs]
    y = (vals[:, cols] > 0).astype(np.float32)
    origin = [(str(attr_file), i + 3) for i in range(len(keys))]
    # CelebA has no subject ids in these files: each image is its own group.
    rec = Records(keys, y, np.ones_like(y), list(keys), origin)
    if not with_partition:
        return rec, root
    part_file = find_file(root, PARTITION_FILES, "CelebA partition file")
    parts = read_partition(part_file)
    part = np.empty(len(keys), np.int64)
    for i, k in enumerate(keys):
        if k not in parts:
            raise DataError(f"{attr_file}:{i + 3}: image {k} has no partition in {part_file}")
        part[i] = parts[k][0]
    if len(parts) != len(keys):
        extra = sorted(set(parts) - set(keys))[0]
        raise DataError(f"{part_file}:{parts[extra][1]}: image {extra} has no attributes in {attr_file}")
    return rec, root, part


@DATASETS.register("celeba")
def load_celeba(config):
    """The CelebA :class:`~monet.data.base.DataBundle` of ``config.subset``."""
    if config.subset not in SUBSETS:
        raise ConfigError(f"subset: expected one of {sorted(SUBSETS)}, got {config.subset!r}")
    root = require_root(config)
    attrs = SUBSETS[config.subset]
    rec, _, part = read_all(root, attrs, with_partition=True)
    splits = {}
    for p, name in SPLITS.items():
        idx = np.flatnonzero(part == p)
        if not len(idx):
            raise DataError(f"{root}: empty fold: no image in partition {p} ({name})")
        splits[name] = rec.take(idx)
    spec = TaskSpec(tuple(Task(a, "binary", 1, "attr") for a in attrs))
    return build_bundle("celeba", spec, splits, config, root, IMAGE_DIRS,
                        dict(dataset="celeba", subset=config.subset, attributes=list(attrs)))


IMAGE_DIRS = ("img_align_celeba", "Img/img_align_celeba", "")
FACE_FORMATS.register("celeba")(FaceFormat(read_all=lambda root, layout="auto": read_all(root),
                                           image_dirs=IMAGE_DIRS))
