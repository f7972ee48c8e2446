"""Face datasets: what BP4D, DISFA, CelebA and Aff-Wild2 share. This module imports none of
their loaders (``au``, ``celeba``, ``affwild2`` import from it).

* :class:`Records`: the examples of a dataset read from its label files (image key as written in
  the files, labels, presence mask, subject, and the file/line each came from).
* :class:`FaceSplit`: a split as a ``torch`` Dataset of ``(uint8 image [3, S, S], y, mask)`` with
  a fast ``.batch(idx)`` and ``.y`` / ``.mask`` tensors; images come from an image folder (PIL,
  decoded in ``num_workers`` threads) or from the uint8 face cache (``monet.data.cache``).
* :func:`carve_validation`: the seeded, subject-exclusive validation split carved out of the
  training subjects (DESIGN.md §9: the search never sees test subjects).
* :data:`FACE_FORMATS`: each loader registers how to read every image of its dataset (the cache
  builder's input); :func:`monet.data.bundle.build_bundle` turns records into a DataBundle.

Example:
    >>> import tempfile, os
    >>> from monet.config import TrainConfig
    >>> from monet.data import load_dataset
    >>> from monet.data.synthetic import write_synthetic
    >>> root = os.path.join(tempfile.mkdtemp(), "bp4d")
    >>> _ = write_synthetic("bp4d", root, subjects=6, frames=5, size=32)
    >>> b = load_dataset(TrainConfig(dataset="bp4d", data_root=root, image_size=32, backbone="tiny_cnn"))
    >>> b.input_shape, b.spec.names[:3], len(b.test)
    ((3, 32, 32), ('AU1', 'AU2', 'AU4'), 10)
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from monet.errors import ConfigError, DataError
from monet.registry import Registry


# ---------------------------------------------------------------------------------- records
@dataclass
class Records:
    """Examples read from label files.

    Attributes:
        keys: image paths as written in the label files (relative; the cache is keyed on them).
        y: ``[N, T]`` float labels (0/1, class index or value); mask: ``[N, T]`` 1 = present.
        subjects: subject id of each example.
        origin: ``(file, line)`` each example came from (1-based line), for error messages.
    """

    keys: list
    y: np.ndarray
    mask: np.ndarray
    subjects: list
    origin: list

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx) -> "Records":
        idx = np.asarray(idx, dtype=np.int64)
        return Records([self.keys[i] for i in idx], self.y[idx], self.mask[idx],
                       [self.subjects[i] for i in idx], [self.origin[i] for i in idx])

    @staticmethod
    def concat(parts: Sequence["Records"]) -> "Records":
        return Records([k for p in parts for k in p.keys], np.concatenate([p.y for p in parts]),
                       np.concatenate([p.mask for p in parts]),
                       [s for p in parts for s in p.subjects], [o for p in parts for o in p.origin])

    def subject_set(self) -> list:
        return sorted(set(self.subjects))


def where(origin) -> str:
    """``file:line`` of an origin pair."""
    return f"{origin[0]}:{origin[1]}"


def check_subject_exclusive(named: dict) -> None:
    """Raise when a subject appears in two of the named record sets (``name -> Records``)."""
    seen = {}
    for name, rec in named.items():
        first = {}
        for s, o in zip(rec.subjects, rec.origin):
            first.setdefault(s, o)
        for s, o in first.items():
            if s in seen and seen[s][0] != name:
                raise DataError(f"{where(o)}: subject {s} is in two folds ({seen[s][0]} at "
                                f"{where(seen[s][1])} and {name}); folds must be subject-exclusive")
            seen.setdefault(s, (name, o))


def carve_validation(rec: Records, share: float, seed: int) -> tuple:
    """Split training records into ``(train, val)`` by subject: a seeded random ``share`` of the
    training subjects (at least one, never all) becomes the validation split."""
    if not 0 < float(share) < 1:
        raise ConfigError(f"val_subjects: expected a share in (0, 1), got {share!r}")
    subjects = rec.subject_set()
    if len(subjects) < 2:
        raise DataError(f"{where(rec.origin[0])}: the training fold has {len(subjects)} subject(s); "
                        "a subject-exclusive validation split needs at least 2")
    n_val = min(len(subjects) - 1, max(1, int(round(float(share) * len(subjects)))))
    perm = np.random.default_rng(int(seed)).permutation(len(subjects))
    val_subj = {subjects[i] for i in perm[:n_val]}
    is_val = np.array([s in val_subj for s in rec.subjects])
    return rec.take(np.flatnonzero(~is_val)), rec.take(np.flatnonzero(is_val))


def find_file(root: Path, candidates: Sequence[str], what: str) -> Path:
    """The first of ``root/candidate`` that exists, else a DataError listing where we looked."""
    for c in candidates:
        p = root / c
        if p.is_file():
            return p
    raise DataError(f"{root}: no {what} (looked for {', '.join(candidates)})")


def image_base(root: Path, rec: Records, candidates=("img", "imgs", "images", "")) -> Path:
    """The folder the image keys are relative to: the first candidate holding the first image."""
    for c in candidates:
        base = root / c if c else root
        if (base / rec.keys[0]).is_file():
            return base
    looked = ", ".join(str(root / c) if c else str(root) for c in candidates)
    raise DataError(f"{where(rec.origin[0])}: image {rec.keys[0]} not found (looked in {looked})")


def image_files(rec: Records, base: Path) -> list:
    """Absolute file of every record; a missing image is an error naming its list file and line."""
    files = []
    for k, o in zip(rec.keys, rec.origin):
        f = os.path.join(base, k)
        if not os.path.isfile(f):
            raise DataError(f"{where(o)}: image {k} not found in {base}")
        files.append(f)
    return files


# ---------------------------------------------------------------------------------- images
def load_image(file: str, size: int) -> np.ndarray:
    """Decode ``file`` with PIL, convert to RGB and resize to ``size x size``: ``[3, S, S]`` uint8."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            if im.format == "JPEG" and min(im.size) >= 2 * size:
                im.draft("RGB", (size, size))       # DCT-domain downscaling: much faster decode
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{file}: cannot decode image ({e})") from None
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


class FolderSource:
    """Images decoded from files (PIL) at ``size`` px; ``threads`` > 0 decodes a batch in a thread
    pool (PIL releases the GIL while decoding and resizing)."""

    def __init__(self, files: list, size: int, threads: int = 0):
        self.files, self.size, self.threads = list(files), int(size), int(threads)
        self._pool = None

    def __len__(self) -> int:
        return len(self.files)

    def get(self, i: int) -> np.ndarray:
        return load_image(self.files[i], self.size)

    def get_many(self, idx) -> np.ndarray:
        idx = [int(i) for i in idx]
        if self.threads > 1 and len(idx) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads)
            arrs = list(self._pool.map(self.get, idx))
        else:
            arrs = [self.get(i) for i in idx]
        return np.stack(arrs) if arrs else np.zeros((0, 3, self.size, self.size), np.uint8)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_pool"] = None
        return d


class FaceSplit(Dataset):
    """One split of a face dataset: items ``(x uint8 [3, S, S], y [T], mask [T])``.

    Attributes:
        y, mask: ``[N, T]`` float tensors (label priors, loss weights).
        subjects, keys: per-example subject id and image key.
        source: a :class:`FolderSource` or a :class:`monet.data.cache.CacheSource`.
    """

    def __init__(self, rec: Records, source):
        if len(source) != len(rec):
            raise ValueError(f"{len(rec)} records but {len(source)} images")
        self.y = torch.from_numpy(np.asarray(rec.y, dtype=np.float32))
        self.mask = torch.from_numpy(np.asarray(rec.mask, dtype=np.float32))
        self.subjects, self.keys, self.source = list(rec.subjects), list(rec.keys), source

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        return torch.from_numpy(self.source.get(int(i))), self.y[i], self.mask[i]

    def batch(self, idx):
        """Rows ``idx`` at once: ``(x [B, 3, S, S] uint8, y [B, T], mask [B, T])``."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        x = torch.from_numpy(self.source.get_many(idx.tolist()))
        return x, self.y[idx], self.mask[idx]


def data_seed(config) -> int:
    return int(config.data_seed if config.data_seed is not None else config.seed)


def require_root(config) -> Path:
    if not config.data_root:
        raise ConfigError(f"data_root: the {config.dataset} dataset needs --data-root DIR")
    root = Path(config.data_root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (--data-root of {config.dataset})")
    return root


# ---------------------------------------------------------------------------------- formats
@dataclass(frozen=True)
class FaceFormat:
    """What the cache builder needs to know of a face dataset's on-disk format.

    Attributes:
        read_all: ``read_all(root, layout) -> (Records, image_root)``: every image once.
        image_dirs: folders under the image root the keys may be relative to, in search order.
    """

    read_all: Callable
    image_dirs: tuple


# Registered by each face loader module where it is defined (au, celeba, affwild2).
FACE_FORMATS = Registry("face dataset", field="dataset")
