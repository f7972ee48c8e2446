"""Face records -> :class:`~monet.data.base.DataBundle`, with images from an image folder or from
the uint8 face cache, at the backbone's input size, with its normalisation.

Kept apart from :mod:`monet.data.faces` because it needs the cache reader, which itself builds
on the face helpers (``faces <- cache <- bundle``: no circle).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from monet.data.augment import FacePrepare
from monet.data.base import DataBundle
from monet.data.cache import FaceCache, preflight_images
from monet.data.faces import FaceSplit, FolderSource, image_base, image_files
from monet.errors import ConfigError, DataError
from monet.models.encoders import encoder_data_config
from monet.tasks import TaskSpec

SIZE_ANY_BACKBONE = 64      # image size for backbones that take any size (tiny_cnn)


def resolve_image_size(config, cache_size: Optional[int]) -> int:
    """``config.image_size``, else the cache's size, else the backbone's default input size
    (64 px for backbones that take any size)."""
    if config.image_size is not None:
        size = int(config.image_size)
        if size < 8:
            raise ConfigError(f"image_size: expected >= 8 pixels, got {size}")
        if cache_size is not None and size != cache_size:
            raise ConfigError(f"image_size: {size} px but the cache {config.cache} holds "
                              f"{cache_size} px images; build a cache at {size} px or drop --image-size")
        return size
    if cache_size is not None:
        return int(cache_size)
    inp = encoder_data_config(config.backbone).get("input_size")
    return int(inp[-1]) if inp else SIZE_ANY_BACKBONE


def build_bundle(name: str, spec: TaskSpec, splits: dict, config, image_root: Path,
                 image_dirs: Sequence[str], meta: Optional[dict] = None) -> DataBundle:
    """Turn ``{"train": Records, "val": ..., "test": ...}`` into a :class:`DataBundle`.

    Images come from ``config.cache`` when set (every key must be in the cache), else from files
    under ``image_root`` (in the first of ``image_dirs`` that holds the first image; each must
    exist and decode: a fast pre-flight pass, ``monet.data.cache.preflight_images``; the first
    missing or corrupt one is an error naming its list file and line).
    """
    for split, rec in splits.items():
        if len(rec) == 0:
            raise DataError(f"{name}: the {split} split is empty")
    cache = FaceCache.open(config.cache) if config.cache else None
    size = resolve_image_size(config, cache.size if cache else None)
    out, base, checked = {}, None, ([], [])
    for split, rec in splits.items():
        if cache is not None:
            source = cache.source(rec)
        else:
            base = base or image_base(Path(image_root), rec, image_dirs)
            files = image_files(rec, base)
            checked[0].extend(files)
            checked[1].extend(rec.origin)
            source = FolderSource(files, size, threads=int(config.num_workers))
        out[split] = FaceSplit(rec, source)
    if checked[0]:   # every image decodes, before any training (the cache checked its own)
        preflight_images(*checked)
    norm = encoder_data_config(config.backbone)
    prepare = FacePrepare(norm["mean"], norm["std"], augment=bool(config.augment))
    meta = dict(meta or {})
    meta.update(data_root=str(config.data_root), image_size=size,
                images="cache" if cache else str(base), cache=str(config.cache) if cache else None,
                sizes={k: len(v) for k, v in splits.items()},
                subjects={k: len(v.subject_set()) for k, v in splits.items()})
    return DataBundle(name=name, spec=spec, train=out["train"], val=out["val"], test=out["test"],
                      input_shape=(3, size, size), meta=meta, prepare=prepare)
