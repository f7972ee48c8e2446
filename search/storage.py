"""Where an experiment's files live: a local folder or object storage, through pyarrow.

The search keeps its own files (``config.yaml``, ``trials.parquet``/``trials.csv``,
``best_config.yaml``, ``best_train_config.yaml``, ASHA's ``asha_state.json``) beside Ray's
experiment state. :class:`ExperimentStore` reads and writes them in a local folder or under any
URI that ``pyarrow.fs.FileSystem.from_uri`` accepts, the way Ray reaches its ``storage_path``:
``s3://bucket/prefix``, ``gs://bucket/prefix``, and their query forms such as
``s3://bucket/prefix?endpoint_override=http://127.0.0.1:9000&region=us-east-1``. Credentials
and endpoints come from the usual places (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, the
instance's role, ``GOOGLE_APPLICATION_CREDENTIALS``, ...), as for Ray.

Writes never leave a half-written file behind: a local file is written to a temporary file and
renamed; an object store (S3, GCS) makes an object visible only once the whole upload is done;
any other pyarrow filesystem gets a temporary object and a move.

Example:
    >>> import tempfile
    >>> store = ExperimentStore(tempfile.mkdtemp())
    >>> store.write_text("notes/a.txt", "hi")
    >>> store.read_text("notes/a.txt"), store.exists("notes/a.txt"), store.listdir("notes")
    ('hi', True, ['a.txt'])
    >>> join_location("s3://bucket/results?endpoint_override=http://127.0.0.1:9000", "exp")
    's3://bucket/results/exp?endpoint_override=http://127.0.0.1:9000'
"""
from __future__ import annotations

import posixpath
import threading
import uuid
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit, urlunsplit

OBJECT_STORES = ("s3", "gcs")        # pyarrow type names of stores that write objects whole
BUCKET_SCHEMES = ("s3", "gs", "gcs")  # URIs whose path on the filesystem is bucket/key

_fs_cache: dict = {}
_fs_lock = threading.Lock()


def is_uri(location: Union[str, Path]) -> bool:
    """Whether ``location`` is a URI (``s3://...``, ``gs://...``) rather than a local path."""
    return "://" in str(location)


def join_location(location: str, *parts: str) -> str:
    """``location`` (a path or a URI, query kept at the end) with ``parts`` appended.

    Example:
        >>> join_location("gs://b/r", "exp", "config.yaml")
        'gs://b/r/exp/config.yaml'
    """
    parts = [p.strip("/") for p in parts if p and p.strip("/")]
    if not is_uri(location):
        return str(Path(location, *parts))
    u = urlsplit(str(location))
    path = posixpath.join(u.path or "/", *parts) if parts else u.path
    return urlunsplit((u.scheme, u.netloc, path, u.query, u.fragment))


def parent_location(location: str) -> str:
    """The folder holding ``location`` (a path or a URI, query kept).

    Example:
        >>> parent_location("s3://b/r/exp?region=x")
        's3://b/r?region=x'
    """
    if not is_uri(location):
        return str(Path(location).parent)
    u = urlsplit(str(location))
    path = posixpath.dirname(u.path.rstrip("/"))
    return urlunsplit((u.scheme, u.netloc, path, u.query, u.fragment))


def base_name(location: str) -> str:
    """The last part of ``location``'s path (``exp`` of ``s3://b/r/exp?x=y``)."""
    if not is_uri(location):
        return Path(location).name
    return posixpath.basename(urlsplit(str(location)).path.rstrip("/"))


def filesystem(location: str):
    """``(pyarrow filesystem, path on it)`` of a URI, the filesystem cached per bucket and query
    (making one may cost a request: pyarrow looks up an S3 bucket's region).

    Raises:
        ValueError: pyarrow does not accept the URI (one line saying why).
    """
    import pyarrow.fs as pafs

    u = urlsplit(str(location))
    if u.scheme not in BUCKET_SCHEMES:   # file://, hdfs://, ...: pyarrow's own split
        try:
            return pafs.FileSystem.from_uri(str(location))
        except Exception as e:  # ArrowInvalid, OSError
            raise ValueError(f"{_shown(location)}: pyarrow cannot open this storage URI "
                             f"({_one_line(e)})") from None
    key = (u.scheme, u.netloc, u.query)
    with _fs_lock:
        fs = _fs_cache.get(key)
    if fs is None:
        try:
            fs, _ = pafs.FileSystem.from_uri(urlunsplit((u.scheme, u.netloc, "", u.query, "")))
        except Exception as e:  # ArrowInvalid, OSError (bad option, no region, no bucket name)
            raise ValueError(f"{_shown(location)}: pyarrow cannot open this storage URI "
                             f"({_one_line(e)})") from None
        with _fs_lock:
            _fs_cache[key] = fs
    return fs, (u.netloc.rpartition("@")[2] + u.path).rstrip("/")


def _shown(location: str) -> str:
    """``location`` without a user part (``s3://KEY:SECRET@bucket``): for messages and tables.
    The query (``?endpoint_override=...``: pyarrow takes no secrets there) is kept, so that a
    location shown can be pasted into the next command."""
    if not is_uri(location):
        return str(location)
    u = urlsplit(str(location))
    return urlunsplit((u.scheme, u.netloc.rpartition("@")[2], u.path, u.query, u.fragment))


def _one_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class ExperimentStore:
    """The files of one experiment, in a local folder or under a URI.

    Args:
        location: the experiment folder ``<storage>/<name>``: a local path or a URI that
            ``pyarrow.fs.FileSystem.from_uri`` accepts (``s3://bucket/prefix/name``,
            ``gs://...``, with query options such as ``?endpoint_override=...``).

    Relative names (``"trials.parquet"``, ``"trial_x/params.json"``) are below the location.
    Errors of the filesystem are raised as ``OSError`` (a missing file: ``FileNotFoundError``).
    """

    def __init__(self, location: Union[str, Path, "ExperimentStore"]):
        if isinstance(location, ExperimentStore):
            location = location.location
        location = str(location)
        self.is_local = not is_uri(location)
        self.location = str(Path(location).expanduser()) if self.is_local else location

    @classmethod
    def of(cls, x: Union[str, Path, "ExperimentStore"]) -> "ExperimentStore":
        """``x`` itself when it is a store, else a store of the location ``x``."""
        return x if isinstance(x, ExperimentStore) else cls(x)

    def __repr__(self) -> str:
        return f"ExperimentStore({self})"

    def __str__(self) -> str:
        """The location without credentials (for messages)."""
        return _shown(self.location)

    def __eq__(self, other) -> bool:
        return isinstance(other, ExperimentStore) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    # ------------------------------------------------------------------ names
    @property
    def name(self) -> str:
        """The experiment's folder name."""
        return base_name(self.location)

    @property
    def local_path(self) -> Optional[Path]:
        """The local folder, or None for a URI."""
        return Path(self.location) if self.is_local else None

    def uri(self, *parts: str) -> str:
        """The full location of ``parts`` below the experiment (a path or a URI with query)."""
        return join_location(self.location, *parts)

    def shown(self, *parts: str) -> str:
        """Like :meth:`uri`, without credentials (for messages and tables)."""
        return _shown(self.uri(*parts))

    def check(self) -> None:
        """Make sure pyarrow accepts the location (no request is made for a local folder).

        Raises:
            ValueError: one line saying why not.
        """
        if not self.is_local:
            filesystem(self.location)

    def check_bucket(self) -> None:
        """Make sure the bucket of a URI exists (a request; nothing for a local folder).

        Raises:
            ValueError: pyarrow does not accept the URI.
            OSError: no such bucket, or the storage cannot be reached (one line).
        """
        if self.is_local:
            return
        import pyarrow.fs as pafs

        fs, path = self._fs_path()
        if urlsplit(self.location).scheme not in BUCKET_SCHEMES:
            return
        bucket = path.split("/", 1)[0]
        try:
            info = fs.get_file_info(bucket)
        except OSError as e:
            raise OSError(f"cannot reach {self}: {_one_line(e)}") from None
        if info.type == pafs.FileType.NotFound:
            raise OSError(f"{self}: no bucket {bucket!r} (create it first)")

    def _fs_path(self, rel: str = ""):
        return filesystem(self.uri(rel))

    # ------------------------------------------------------------------ reading
    def read_bytes(self, rel: str) -> bytes:
        """The bytes of the file ``rel``.

        Raises:
            FileNotFoundError: there is no such file.
        """
        if self.is_local:
            return Path(self.location, rel).read_bytes()
        fs, path = self._fs_path(rel)
        try:
            with fs.open_input_stream(path) as f:
                return f.readall()
        except FileNotFoundError:
            raise
        except OSError as e:
            if self._missing(fs, path):
                raise FileNotFoundError(f"{self.shown(rel)}: no such file") from None
            raise OSError(f"{self.shown(rel)}: {_one_line(e)}") from None

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode("utf-8")

    def _missing(self, fs, path: str) -> bool:
        import pyarrow.fs as pafs

        try:
            return fs.get_file_info(path).type == pafs.FileType.NotFound
        except OSError:
            return False

    def exists(self, rel: str = "") -> bool:
        """Whether the file (or folder) ``rel`` exists."""
        if self.is_local:
            return Path(self.location, rel).exists()
        import pyarrow.fs as pafs

        fs, path = self._fs_path(rel)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        """Whether ``rel`` is a file."""
        if self.is_local:
            return Path(self.location, rel).is_file()
        import pyarrow.fs as pafs

        fs, path = self._fs_path(rel)
        return fs.get_file_info(path).type == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        """Whether ``rel`` is a folder (under a URI: whether anything lies below it)."""
        if self.is_local:
            return Path(self.location, rel).is_dir()
        return bool(self.listdir(rel))

    def listdir(self, rel: str = "") -> list:
        """Sorted names of the entries right below ``rel`` (empty when there is none)."""
        if self.is_local:
            p = Path(self.location, rel)
            return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
        import pyarrow.fs as pafs

        fs, path = self._fs_path(rel)
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)

    # ------------------------------------------------------------------ writing
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write the file ``rel`` whole: readers see the old file or the new one, never a part."""
        if self.is_local:
            from monet.io import atomic_write_bytes
            atomic_write_bytes(Path(self.location, rel), data)
            return
        fs, path = self._fs_path(rel)
        try:
            if fs.type_name in OBJECT_STORES:    # an object appears when its upload completes
                with fs.open_output_stream(path) as f:
                    f.write(data)
                return
            fs.create_dir(posixpath.dirname(path), recursive=True)
            tmp = f"{posixpath.dirname(path)}/.{posixpath.basename(path)}.{uuid.uuid4().hex}.tmp"
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
        except OSError as e:
            raise OSError(f"cannot write {self.shown(rel)}: {_one_line(e)}") from None

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_yaml(self, rel: str, obj) -> None:
        import yaml

        self.write_text(rel, yaml.safe_dump(obj, sort_keys=False))

    def read_yaml(self, rel: str):
        import yaml

        return yaml.safe_load(self.read_text(rel))
