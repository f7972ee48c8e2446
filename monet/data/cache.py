"""The fast face cache: every image of a dataset decoded and resized once into a uint8
memory-mapped array, so training reads ``[B, 3, S, S]`` batches with one fancy index instead of
decoding JPEGs.

Folder layout::

    CACHE/images.u8       uint8 [N, 3, S, S], C order (images.u8.partial while being built)
    CACHE/index.parquet   row, key (image path as in the label files), subject
    CACHE/meta.json       format, dataset, data_root, layout, size, count, done, complete

Building is resumable: rows are written in chunks and ``meta.json`` (written atomically after
each flushed chunk) records how many are done; rerunning the same command continues from there.
When all rows are written the array is renamed to ``images.u8`` and ``complete`` is set.
Before anything is written, every image still to decode is checked (:func:`preflight_images`:
one line naming the bad file and the list line it comes from), and a fresh build that still
meets an undecodable image (or a full disk) removes what it wrote; an interrupted one (Ctrl-C,
a kill) keeps its chunks for the rerun. Opening
checks the format, the completeness, the array size against ``count x 3 x S x S`` and the index
length against ``count``. Labels are not cached: they are always read from ``--data-root``, and
each key of a split must be in the cache.

CLI::

    python -m monet.data.cache --dataset bp4d --data-root DIR --size 299 --out CACHE

then train with ``--cache CACHE`` (the image size is the cache's).

Example:
    >>> import tempfile, os
    >>> from monet.data.synthetic import write_synthetic
    >>> d = tempfile.mkdtemp()
    >>> _ = write_synthetic("bp4d", os.path.join(d, "bp4d"), subjects=3, frames=4, size=32)
    >>> c = build_cache("bp4d", os.path.join(d, "bp4d"), 32, os.path.join(d, "cache"), progress=False)
    >>> c.count, c.size, c.source(c.records_like(["F001/T1/1000.jpg"])).get_many([0]).shape
    (12, 32, (1, 3, 32, 32))
"""
from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from monet.data.faces import FACE_FORMATS, Records, image_base, image_files, load_image
from monet.errors import ConfigError, DataError, MonetError
from monet.io import atomic_write_bytes, atomic_write_json

FORMAT = "monet-face-cache/1"
IMAGES, PARTIAL, INDEX, META = "images.u8", "images.u8.partial", "index.parquet", "meta.json"


class CacheSource:
    """Rows of a cache array as an image source for :class:`monet.data.faces.FaceSplit`.

    Picklable (DataLoader workers): the memmap is opened lazily in each process."""

    def __init__(self, path: str, rows: np.ndarray, count: int, size: int):
        self.path, self.rows = str(path), np.asarray(rows, dtype=np.int64)
        self.count, self.size = int(count), int(size)
        self._arr = None

    def _array(self) -> np.ndarray:
        if self._arr is None:
            self._arr = np.memmap(self.path, dtype=np.uint8, mode="r",
                                  shape=(self.count, 3, self.size, self.size))
        return self._arr

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, i: int) -> np.ndarray:
        return np.array(self._array()[self.rows[int(i)]])

    def get_many(self, idx) -> np.ndarray:
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        order = np.argsort(rows, kind="stable")        # read the file front to back
        out = np.empty((len(rows), 3, self.size, self.size), np.uint8)
        out[order] = self._array()[rows[order]]
        return out

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_arr"] = None
        return d


class FaceCache:
    """An opened, checked cache folder (use :meth:`open`)."""

    def __init__(self, path: Path, meta: dict, keys: list, subjects: list):
        self.path, self.meta, self.keys, self.subjects = Path(path), meta, keys, subjects
        self.size, self.count = int(meta["size"]), int(meta["count"])
        self._row = None

    @classmethod
    def open(cls, path) -> "FaceCache":
        """Open and check a complete cache; a clear DataError says what is wrong otherwise."""
        path = Path(path)
        meta = _read_meta(path)
        if meta is None:
            raise DataError(f"{path}: not a face cache (no {META}); build one with "
                            "python -m monet.data.cache --dataset ... --data-root ... --out ...")
        if not meta.get("complete"):
            raise DataError(f"{path / META}: cache incomplete ({meta.get('done', 0)} of "
                            f"{meta.get('count')} images); rerun the cache command to resume")
        arr = path / IMAGES
        expected = int(meta["count"]) * 3 * int(meta["size"]) ** 2
        if not arr.is_file():
            raise DataError(f"{arr}: missing (the cache's image array)")
        if arr.stat().st_size != expected:
            raise DataError(f"{arr}: {arr.stat().st_size} bytes; expected {expected} "
                            f"({meta['count']} images of 3x{meta['size']}x{meta['size']}); rebuild the cache")
        keys, subjects = _read_index(path)
        if len(keys) != int(meta["count"]):
            raise DataError(f"{path / INDEX}: {len(keys)} rows; {META} says {meta['count']} images")
        return cls(path, meta, keys, subjects)

    def row_of(self) -> dict:
        if self._row is None:
            self._row = {k: i for i, k in enumerate(self.keys)}
        return self._row

    def source(self, rec) -> CacheSource:
        """A :class:`CacheSource` for the image keys of ``rec`` (Records); a key not in the cache
        is an error naming the label file and line it came from."""
        row = self.row_of()
        rows = np.empty(len(rec.keys), np.int64)
        for i, k in enumerate(rec.keys):
            r = row.get(k)
            if r is None:
                o = rec.origin[i]
                raise DataError(f"{o[0]}:{o[1]}: image {k} is not in the cache {self.path} "
                                f"(built from {self.meta.get('data_root')}); rebuild the cache")
            rows[i] = r
        return CacheSource(self.path / IMAGES, rows, self.count, self.size)

    def records_like(self, keys):
        """Minimal Records for ``keys`` (examples and benchmarks)."""
        z = np.zeros((len(keys), 0), np.float32)
        return Records(list(keys), z, z, list(keys), [(str(self.path / INDEX), 0)] * len(keys))


def _read_meta(path: Path) -> Optional[dict]:
    f = path / META
    if not f.is_file():
        return None
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{f}: not valid JSON ({e}); delete the cache folder and rebuild") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{f}: format {meta.get('format')!r}; expected {FORMAT!r}")
    return meta


def _read_index(path: Path) -> tuple:
    import pyarrow.parquet as pq

    f = path / INDEX
    if not f.is_file():
        raise DataError(f"{f}: missing (the cache's index)")
    t = pq.read_table(f, columns=["row", "key", "subject"])
    rows = t.column("row").to_numpy()
    if not np.array_equal(rows, np.arange(len(rows))):
        raise DataError(f"{f}: rows are not 0..{len(rows) - 1} in order")
    return t.column("key").to_pylist(), t.column("subject").to_pylist()


def _write_index(path: Path, keys: list, subjects: list) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"row": pa.array(np.arange(len(keys), dtype=np.int64)),
                  "key": pa.array(keys, pa.string()), "subject": pa.array(subjects, pa.string())})
    buf = io.BytesIO()
    pq.write_table(t, buf)
    atomic_write_bytes(path / INDEX, buf.getvalue())


class _Progress:
    """tqdm when installed, else a line every few seconds."""

    def __init__(self, total: int, done: int, enabled: bool, desc: str):
        self.bar, self.enabled, self.total, self.done, self.t = None, enabled, total, done, 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=desc, unit="img", file=sys.stderr)
        except ImportError:
            pass

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.time() - self.t > 5:
            self.t = time.time()
            print(f"cache: {self.done}/{self.total} images", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_image(file: str, decode_jpeg: bool = True, full: bool = False) -> Optional[str]:
    """None when ``file`` decodes, else the reason (one line)."""
    from PIL import Image

    try:
        with Image.open(file) as im:
            fmt = im.format
            im.verify()                 # structure and checksums (PNG CRCs, ...)
        if (fmt == "JPEG" and decode_jpeg) or full:
            with Image.open(file) as im:  # verify misses truncated JPEG data: decode at 1/8 size
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
                im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        return " ".join(str(e).split())[:120] or type(e).__name__
    return None


def preflight_images(files, origins=None, workers: Optional[int] = None,
                     decode_jpeg: bool = True, full: bool = False) -> None:
    """Check that every image of ``files`` decodes, before any work: PIL ``verify`` (headers,
    chunk checksums) in threads, and for JPEGs a decode at 1/8 scale (``draft``), which finds
    truncated or corrupt data that ``verify`` misses, at a fraction of a full decode's cost.
    A PNG whose checksums are right but whose compressed data is not passes ``verify``: pass
    ``full=True`` to decode every non-JPEG image completely too (slower).

    Raises one :class:`DataError` line naming the first bad file (in list order), where it is
    listed (``origins[i]``: e.g. ``(label_file, line)``) and how many are bad.

    Args:
        files: image paths.
        origins: optional, one ``(file, line)`` or text per image, named in the error.
        workers: threads (default: CPU count, at most 16).
        decode_jpeg: also decode JPEGs at 1/8 scale (False: ``verify`` only).
        full: decode every image (JPEGs still at 1/8 scale).

    Example:
        >>> import tempfile, os
        >>> f = os.path.join(tempfile.mkdtemp(), "bad.jpg")
        >>> _ = open(f, "wb").write(b"not an image")
        >>> preflight_images([f])
        Traceback (most recent call last):
        ...
        monet.errors.DataError: ...bad.jpg: cannot decode image (cannot identify image file ...)
    """
    files = [str(f) for f in files]
    if not files:
        return
    workers = int(workers or min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(max(1, workers)) as pool:
        reasons = list(pool.map(lambda f: _check_image(f, decode_jpeg, full), files))
    bad = [i for i, r in enumerate(reasons) if r is not None]
    if not bad:
        return
    i = bad[0]
    where = ""
    if origins is not None:
        o = origins[i]
        where = f" (listed in {o[0]}:{o[1]})" if isinstance(o, (tuple, list)) else f" ({o})"
    more = f"; {len(bad)} of {len(files)} images are bad" if len(bad) > 1 else ""
    raise DataError(f"{files[i]}: cannot decode image ({reasons[i]}){where}{more}")


def build_cache(dataset: str, data_root, size: int, out, layout: str = "auto",
                workers: Optional[int] = None, chunk: int = 256, progress: bool = True,
                stop_after: Optional[int] = None) -> FaceCache:
    """Decode and resize every image of ``dataset`` under ``data_root`` into the cache ``out``.

    Args:
        dataset: ``bp4d``, ``disfa``, ``celeba`` or ``affwild2``.
        data_root: the dataset folder (as for training).
        size: side of the square uint8 images.
        out: cache folder; an incomplete cache of the same dataset, size and image list there is
            resumed, a complete one is checked and returned.
        layout: BP4D/DISFA list layout (``auto`` as in training).
        workers: decoding threads (default: CPU count).
        chunk: images per flushed chunk (the resume granularity).
        progress: show a progress bar.
        stop_after: stop after this many new images (to test resuming).
    """
    from monet.cli import check_output_dir

    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 2048:
        raise ConfigError(f"--size: expected 8 to 2048 pixels, got {size}")
    size = int(size)
    if workers is not None and not 1 <= int(workers) <= 1024:
        raise ConfigError(f"--workers: expected 1 to 1024 decoding threads, got {workers}")
    if out is None or str(out).strip() == "":
        raise ConfigError("--out: empty path; expected a folder")
    out = Path(out)
    old = _read_meta(out) if out.is_dir() else None
    if old is None:   # a new cache: --out must be creatable (a file, read-only: one line)
        check_output_dir(out, overwrite=False, flag="--out", marker=META, overwrite_flag=None)
    elif not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out: {out} is not writable (read-only folder)")
    fmt = FACE_FORMATS.get(dataset)
    rec, img_root = fmt.read_all(data_root, layout)
    base = image_base(Path(img_root), rec, fmt.image_dirs)
    files = image_files(rec, base)
    n = len(files)
    meta = {"format": FORMAT, "dataset": dataset, "data_root": str(Path(data_root).resolve()),
            "layout": layout, "size": size, "count": n, "done": 0, "complete": False}
    if old is not None:
        same = (old.get("dataset") == dataset and int(old.get("size", -1)) == size
                and int(old.get("count", -1)) == n)
        if same and (out / INDEX).is_file() and _read_index(out)[0] == rec.keys:
            if old.get("complete"):
                return FaceCache.open(out)
            meta["done"] = int(old.get("done", 0))
        else:
            raise DataError(f"{out}: holds a different cache ({old.get('dataset')}, "
                            f"{old.get('size')} px, {old.get('count')} images); choose another --out")
    # every image still to decode must decode: checked before anything is written
    preflight_images(files[meta["done"]:], rec.origin[meta["done"]:], workers)
    fresh = meta["done"] == 0
    made_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    part = out / PARTIAL
    arr = None
    bar = _Progress(n, meta["done"], progress, f"cache {dataset} {size}px")
    new = 0
    try:
        if fresh:
            _write_index(out, rec.keys, rec.subjects)
            atomic_write_json(out / META, meta)
        arr = np.memmap(part, dtype=np.uint8, mode="r+" if part.is_file() else "w+",
                        shape=(n, 3, size, size))
        with ThreadPoolExecutor(int(workers or os.cpu_count() or 1)) as pool:
            while meta["done"] < n:
                a = meta["done"]
                b = min(n, a + chunk)
                arr[a:b] = np.stack(list(pool.map(lambda f: load_image(f, size), files[a:b])))
                arr.flush()
                meta["done"] = b
                atomic_write_json(out / META, meta)
                bar.update(b - a)
                new += b - a
                if stop_after is not None and new >= stop_after and meta["done"] < n:
                    return None
    except (MonetError, OSError):
        # a bad image or a full disk: a fresh build leaves nothing behind (an interrupted one,
        # Ctrl-C or a kill, keeps its chunks so that rerunning the command resumes it)
        if fresh:
            del arr
            arr = None
            _remove_build(out, made_dir)
        raise
    finally:
        bar.close()
        del arr
    os.replace(part, out / IMAGES)
    meta["complete"] = True
    atomic_write_json(out / META, meta)
    return FaceCache.open(out)


def _remove_build(out: Path, made_dir: bool) -> None:
    """Remove what a fresh build wrote into ``out`` (the folder too when the build made it)."""
    import shutil

    if made_dir:
        shutil.rmtree(out, ignore_errors=True)
        return
    for name in (PARTIAL, INDEX, META):
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass
    from monet.io import clean_stale_tmp
    clean_stale_tmp(out, recursive=False)


def main(argv=None) -> int:
    from monet.cli import ArgumentParser, parse_int, run_main

    p = ArgumentParser(prog="python -m monet.data.cache",
                       description="Decode and resize a face dataset once into a uint8 cache "
                                   "(every image is checked first; rerun to resume).")
    p.add_argument("--dataset", required=True, choices=("bp4d", "disfa", "celeba", "affwild2"),
                   help="face dataset")
    p.add_argument("--data-root", required=True, help="the dataset folder (as for training)")
    p.add_argument("--size", type=parse_int, default=299, help="image side in pixels, 8 to 2048")
    p.add_argument("--out", required=True,
                   help="cache folder: new or empty, or an incomplete cache to resume")
    p.add_argument("--layout", default="auto", choices=("auto", "graphau", "jaanet", "raw"),
                   help="bp4d/disfa label-list layout")
    p.add_argument("--workers", type=parse_int, default=None,
                   help="decoding threads, 1 to 1024 (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    def run(_):
        t0 = time.perf_counter()
        c = build_cache(a.dataset, a.data_root, a.size, a.out, a.layout, a.workers,
                        progress=not a.no_progress)
        dt = time.perf_counter() - t0
        print(f"cache {a.out}: {c.count} images of 3x{c.size}x{c.size} "
              f"({c.count * 3 * c.size * c.size / 2**20:.1f} MiB) in {dt:.1f} s")
        return 0

    return run_main(run)


if __name__ == "__main__":
    sys.exit(main())
