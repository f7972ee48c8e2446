"""Atomic file writes: write to a temporary file in the same folder, then rename."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from monet.errors import ConfigError


def atomic_write_bytes(path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_yaml(path, obj) -> None:
    import yaml

    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False))


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` through a temporary file and a rename."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def clean_stale_tmp(folder, recursive: bool = True, min_age_s: float = 0.0) -> list:
    """Remove the temporary files that an interrupted :func:`atomic_write_bytes` left behind
    (``.<name>.<random>.tmp`` beside the file it was writing, e.g. a checkpoint killed mid-save).

    Call it at the start of a run or a resume, on the run folder, before anything writes there
    (a writer in another process would lose its file; ``min_age_s`` keeps files younger than
    that). Only files that match the pattern are removed. Returns the removed paths.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / ".checkpoint.pt.k2j3.tmp").write_bytes(b"half")
        >>> atomic_write_text(d / "keep.txt", "ok")
        >>> [p.name for p in clean_stale_tmp(d)], sorted(p.name for p in d.iterdir())
        (['.checkpoint.pt.k2j3.tmp'], ['keep.txt'])
    """
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    found = folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp")
    removed = []
    for p in sorted(found):
        if not p.is_file() or p.is_symlink() or p.name.count(".") < 3:
            continue
        try:
            if min_age_s and now - p.stat().st_mtime < min_age_s:
                continue
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def read_text_lines(path, what: str = "text file") -> list:
    """The lines of a UTF-8 text file (trailing blank lines dropped, ends stripped).

    A missing, unreadable or binary file is one :class:`monet.errors.DataError` line naming it
    (never a ``UnicodeDecodeError`` traceback). ``what`` names the expected content.
    """
    from monet.errors import DataError

    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{p}: no such file ({what})") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e}; {what})") from None
    nul = data.find(b"\x00")
    if nul >= 0:
        raise DataError(f"{p}: binary data (byte {nul}); expected a {what}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: not UTF-8 text (byte {e.start}); expected a {what}") from None
    lines = [ln.strip() for ln in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


# ---------------------------------------------------------------------------------- YAML input
def one_line(msg) -> str:
    """``msg`` as a single line (newlines and runs of spaces collapsed)."""
    return " ".join(str(msg).split())


def yaml_kind(v) -> str:
    """How a YAML value reads in a message: ``a list``, ``text 'x'``..."""
    if v is None:
        return "nothing (an empty file)"
    if isinstance(v, list):
        return f"a list ({len(v)} items)"
    if isinstance(v, str):
        return f"text {v[:40]!r}"
    return f"{type(v).__name__} {v!r}"[:60]


def load_yaml_mapping(path, flag: str, what: str = "a mapping of name: value") -> dict:
    """Read a YAML file that must hold a mapping (an empty file is ``{}``).

    Every problem is one ``ConfigError`` line naming the file: missing, a folder, unreadable,
    binary, malformed YAML (with line and column), or not a mapping (a list, a number, text).

    Example:
        >>> import tempfile
        >>> f = os.path.join(tempfile.mkdtemp(), "c.yaml")
        >>> _ = open(f, "w").write("- 1\\n- 2\\n")
        >>> load_yaml_mapping(f, "--config")
        Traceback (most recent call last):
        ...
        monet.errors.ConfigError: ...c.yaml: expected a mapping of name: value, got a list (2 items)
    """
    import yaml

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{flag}: no such file {path}")
    if p.is_dir():
        raise ConfigError(f"{flag}: {path} is a folder; expected a YAML file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{flag}: cannot read {path} ({e.strerror or e})") from None
    bad = data.find(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start if bad < 0 else min(bad, e.start)
    if bad >= 0:
        raise ConfigError(f"{path}: binary data at byte {bad}, not a YAML text file; "
                          f"expected {what}")
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{path}: not valid YAML{where} ({one_line(problem)}); "
                          f"expected {what}") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected {what}, got {yaml_kind(d)}")
    return d
