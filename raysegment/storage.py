"""One path/URI helper for every file the library reads or writes.

Local paths, `file://`, `s3://`, `gs://` and anything else pyarrow.fs understands take the same
code path, so a registry or a pretrained file can live on a bucket without special cases.
Writes that matter are atomic: a temporary sibling, fsync, then rename.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysegment.errors import RaySegmentError

if TYPE_CHECKING:
    import pyarrow.fs as pafs


PLACEHOLDER_BUCKET = "YOUR-BUCKET"  # what the shipped cluster specs and manifests say until edited


def check_not_placeholder(location: str) -> None:
    if f"://{PLACEHOLDER_BUCKET}" in location:
        raise RaySegmentError(
            f"{location}: replace {PLACEHOLDER_BUCKET} with your bucket (the cluster specs ship with a placeholder)"
        )


def sha256_hex(data: bytes) -> str:
    """The content hash everything stored is named and checked by (weights, graphs, signatures)."""
    return hashlib.sha256(data).hexdigest()


def is_uri(location: str) -> bool:
    """True for `scheme://...` locations other than plain local paths."""
    return "://" in str(location)


# pyarrow's S3 stream without a buffer reads an object in many small requests: a 4 MB PNG from the
# loopback server took 76-88 ms that way against 12 ms with one buffered GET (boto3: 9-10 ms).
READ_BUFFER = 8 * 2**20
BUCKET_SCHEMES = ("s3", "gs")  # URIs whose path inside the filesystem is `bucket/key`


@functools.lru_cache(maxsize=32)
def bucket_filesystem(scheme: str, bucket: str) -> pafs.FileSystem:
    """One filesystem per bucket and process: making one (credentials, region, endpoint from the
    environment) costs far more than a small object's GET, and a dataset is read object by object."""
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return fs


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """Return the filesystem and the path inside it for a local path or a URI."""
    import pyarrow.fs as pafs  # imported on use: plain local paths never need it

    location = str(location)
    if not is_uri(location):
        return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())
    check_not_placeholder(location)
    scheme, _, rest = location.partition("://")
    try:
        if scheme in BUCKET_SCHEMES:
            return bucket_filesystem(scheme, rest.split("/", 1)[0]), rest.rstrip("/")
        return pafs.FileSystem.from_uri(location)
    except (pafs.ArrowInvalid, OSError, ValueError) as exc:  # type: ignore[attr-defined]
        raise RaySegmentError(f"cannot open {location}: {exc}") from exc


def read_bytes(location: str | os.PathLike) -> bytes:
    """Read a whole file from a local path or URI."""
    fs, path = resolve(location)
    try:
        with fs.open_input_stream(path, buffer_size=READ_BUFFER) as stream:
            return stream.read()
    except FileNotFoundError as exc:
        raise RaySegmentError(f"{location} does not exist") from exc
    except OSError as exc:
        raise RaySegmentError(f"cannot read {location}: {exc}") from exc


def fetch_to_local(location: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local path for `location`, copying remote files into `cache_dir` first."""
    location = str(location)
    if location.startswith("file://"):
        location = location[len("file://") :]
    if not is_uri(location):
        path = Path(location).expanduser()
        if not path.is_file():
            raise RaySegmentError(f"{path} does not exist or is not a file")
        return path
    cache = Path(cache_dir or Path(tempfile.gettempdir()) / "raysegment-cache")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / (location.replace("://", "_").replace("/", "_"))
    if not target.exists():
        atomic_write_bytes(target, read_bytes(location))
    return target


def atomic_write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write `data` so a reader sees the old file or the new one, never a torn one."""
    location = str(location)
    if is_uri(location) and not location.startswith("file://"):
        fs, path = resolve(location)
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
        return
    target = Path(location.removeprefix("file://")).expanduser()
    tmp = durable_temp_beside(target, data)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def durable_temp_beside(target: Path, data: bytes) -> str:
    """A fully written, fsynced temporary file in `target`'s folder (hidden: its name starts with
    '.'); on the same filesystem, so renaming or linking it to `target` is atomic."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_write_json(location: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(location, json.dumps(obj, indent=2, sort_keys=True).encode())


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Atomically move a fully written folder into place, replacing an older one."""
    for root, _, files in os.walk(tmp_dir):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
    if final_dir.exists():
        trash = final_dir.with_name(f".{final_dir.name}.old-{os.getpid()}")
        os.replace(final_dir, trash)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


def join(location: str, *parts: str) -> str:
    """`location/part/...` for a folder or a URI (keeps `s3://`, and any `?query` at the end)."""
    base, sep, query = location.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + (sep + query if sep else "")


def upload_tree(local: Path, location: str) -> str:
    """Copy a local folder to a folder or URI; returns `location`."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return location
