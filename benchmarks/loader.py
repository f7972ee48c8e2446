"""Images per second delivered to the model: image folders (PIL decoding in DataLoader workers)
vs the uint8 face cache, measured side by side in one run, at 299 px.

    python benchmarks/loader.py                       # synthetic BP4D at 299 px, 2 cores
    python benchmarks/loader.py --data-root DIR       # your BP4D (ME-GraphAU layout)
    python benchmarks/loader.py --quick               # fewer images and rounds

"Delivered" means a shuffled training batch of ``--batch`` images handed to the training loop
as the uint8 tensor ``[B, 3, S, S]`` that goes to the device (where ``prepare`` normalises and
augments it on the GPU; the same work for both paths, so it is timed separately, on the CPU, for
CPU-only runs). Folders: ``torch.utils.data.DataLoader`` over the split with ``--workers``
worker processes (PIL decode + resize per image). Cache: ``split.batch(idx)`` on the
memory-mapped array in the main process. Rounds alternate folder / cache and the median of each
is reported, so both see the same machine load. Target: cache >= 5x folders. Also printed:
cores needed to feed one Inception-v3 trial at ``--feed`` images/s (default 1,600) from each
path, from the measured per-core rates (the cache path runs in one process: one core).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from monet.config import TrainConfig  # noqa: E402
from monet.data import load_dataset  # noqa: E402
from monet.data.cache import build_cache  # noqa: E402
from monet.data.synthetic import write_synthetic  # noqa: E402


def folder_rate(split, batch: int, workers: int, n_batches: int, seed: int) -> float:
    """Images/s from a DataLoader with ``workers`` processes (the first batch, which includes
    worker start-up, is not timed)."""
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(split, batch_size=batch, shuffle=True, generator=g,
                                         num_workers=workers, drop_last=True,
                                         persistent_workers=False, prefetch_factor=2 if workers else None)
    it = iter(loader)
    next(it)
    n, t0 = 0, time.perf_counter()
    for _ in range(n_batches):
        try:
            x = next(it)[0]
        except StopIteration:
            break
        n += len(x)
    dt = time.perf_counter() - t0
    del it, loader
    return n / dt


def cache_rate(split, batch: int, n_batches: int, seed: int, prepare=None) -> float:
    """Images/s of ``split.batch`` on shuffled indices (then ``prepare`` too, when given)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(split), generator=g)
    split.batch(perm[:batch])
    n, t0 = 0, time.perf_counter()
    for i in range(n_batches):
        a = (i * batch) % max(1, len(split) - batch)
        x = split.batch(perm[a:a + batch])[0]
        if prepare is not None:
            prepare(x, True, g)
        n += len(x)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", help="BP4D folder (default: synthetic BP4D written to a temp dir)")
    p.add_argument("--size", type=int, default=299, help="model input size (default 299)")
    p.add_argument("--source-size", type=int, default=299,
                   help="synthetic image size on disk (default 299; real BP4D crops are larger)")
    p.add_argument("--images", type=int, default=1200, help="synthetic images (default 1200)")
    p.add_argument("--workers", type=int, default=2, help="cores: DataLoader workers / torch threads")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--batches", type=int, default=12, help="timed batches per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--feed", type=float, default=1600.0, help="images/s one Inception-v3 trial eats")
    p.add_argument("--quick", action="store_true", help="400 images, 5 batches, 2 rounds")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.batches, a.rounds = 400, 5, 2
    torch.set_num_threads(a.workers)
    tmp = tempfile.TemporaryDirectory(prefix="monet-loader-bench-")
    work = Path(tmp.name)
    root = Path(a.data_root) if a.data_root else work / "bp4d"
    if not a.data_root:
        t0 = time.perf_counter()
        frames = max(1, math.ceil(a.images / 12))
        write_synthetic("bp4d", root, subjects=12, frames=frames, size=a.source_size, seed=0)
        print(f"synthetic BP4D: {12 * frames} images of {a.source_size} px "
              f"({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    cache = build_cache("bp4d", root, a.size, work / "cache", workers=a.workers, progress=False)
    build_s = time.perf_counter() - t0
    print(f"cache build: {cache.count} images at {a.size} px in {build_s:.1f} s "
          f"({cache.count / build_s:.0f} images/s on {a.workers} threads)")
    base = dict(dataset="bp4d", data_root=str(root), backbone="inception_v3", image_size=a.size)
    folder = load_dataset(TrainConfig(**base))
    cached = load_dataset(TrainConfig(**base, cache=str(work / "cache")))
    n_batches = min(a.batches, len(folder.train) // a.batch - 1)
    if n_batches < 2:
        print(f"error: need at least {3 * a.batch} training images, got {len(folder.train)}",
              file=sys.stderr)
        return 2
    cached.prepare.augment = True
    rf, rc, rp = [], [], []
    for r in range(a.rounds):
        rf.append(folder_rate(folder.train, a.batch, a.workers, n_batches, r))
        rc.append(cache_rate(cached.train, a.batch, n_batches, r))
        rp.append(cache_rate(cached.train, a.batch, max(2, n_batches // 3), r, cached.prepare))
        print(f"round {r + 1}: folders {rf[-1]:7.0f} img/s   cache {rc[-1]:7.0f} img/s   "
              f"(cache + CPU prepare/augment {rp[-1]:5.0f} img/s)")
    f, c, cp = statistics.median(rf), statistics.median(rc), statistics.median(rp)
    ratio = c / f
    per_core_f, per_core_c = f / a.workers, c
    cores_f, cores_c = math.ceil(a.feed / per_core_f), math.ceil(a.feed / per_core_c)
    print()
    print(f"{'path':<34}{'img/s':>10}{'img/s/core':>12}{'cores for ' + str(int(a.feed)) + '/s':>18}")
    print(f"{'folders (PIL, DataLoader workers)':<34}{f:10.0f}{per_core_f:12.0f}{cores_f:18d}")
    print(f"{'cache (uint8 memmap)':<34}{c:10.0f}{per_core_c:12.0f}{cores_c:18d}")
    print(f"{'cache + prepare/augment on CPU':<34}{cp:10.0f}{'':>12}{'(GPU runs: on device)':>24}")
    print(f"\ncache / folders = {ratio:.1f}x  (target >= 5x: {'met' if ratio >= 5 else 'NOT met'}); "
          f"{a.size} px, batch {a.batch}, {a.workers} cores, source {a.source_size} px JPEG, "
          f"{os.cpu_count()} CPUs visible")
    print(f"one Inception-v3 trial at {a.feed:.0f} img/s needs about {cores_f} cores fed from folders, "
          f"{cores_c} from the cache")
    if a.json:
        Path(a.json).write_text(json.dumps(dict(
            folders_img_s=f, cache_img_s=c, cache_cpu_prepare_img_s=cp, ratio=ratio, cores_folders=cores_f, cores_cache=cores_c,
            size=a.size, batch=a.batch, workers=a.workers, rounds=dict(folders=rf, cache=rc),
            cache_build_s=build_s, images=cache.count), indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
