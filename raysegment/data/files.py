"""Dataset files on a local disk or in object storage, through one small interface.

A dataset location is a `Path` (a local file or folder) or a URI string (`s3://bucket/key`, anything
pyarrow.fs opens). Listing and reading go through the project's one storage layer (`raysegment.storage`:
pyarrow.fs, one filesystem per bucket and process, credentials and endpoint from the environment
only: `AWS_*`, `AWS_ENDPOINT_URL`), so a dataset in a bucket is read object by object into memory,
never copied to a disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from raysegment import storage
from raysegment.errors import DatasetError, RaySegmentError
from raysegment.storage import is_uri

if TYPE_CHECKING:
    import pyarrow.fs as pafs

Location = Path | str  # a local path, or an object URI such as s3://bucket/prefix/img.png


def location(text: str | Path) -> Location:
    """`text` as a Location: URIs stay strings (`file://` becomes a path), anything else a Path."""
    text = str(text)
    if text.startswith("file://"):
        return Path(text.removeprefix("file://")).expanduser()
    return text.rstrip("/") if is_uri(text) else Path(text).expanduser()


def is_remote(loc: Location) -> bool:
    return isinstance(loc, str)


def join(loc: Location, *parts: str) -> Location:
    """`loc/part/...`: a URI through `storage.join` (the one join of URIs), a folder as a Path."""
    return storage.join(loc, *parts) if isinstance(loc, str) else loc.joinpath(*parts)


def name(loc: Location) -> str:
    return loc.rsplit("/", 1)[-1] if isinstance(loc, str) else loc.name


def parent(loc: Location) -> Location:
    return loc.rsplit("/", 1)[0] if isinstance(loc, str) else loc.parent


def stem(loc: Location) -> str:
    base = name(loc)
    return base.rsplit(".", 1)[0] if "." in base else base


def suffix(loc: Location) -> str:
    base = name(loc)
    return "." + base.rsplit(".", 1)[1] if "." in base else ""


def _split(uri: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path inside it, `scheme://`) of a URI, through the one storage layer."""
    try:
        fs, path = storage.resolve(uri)
    except RaySegmentError as exc:
        raise DatasetError(str(exc)) from exc
    return fs, path, uri.partition("://")[0] + "://"


def _entries(folder: str, recursive: bool = False) -> list[tuple[str, bool]]:
    """(uri, is_dir) of what lies under `folder` ([] when absent)."""
    import pyarrow.fs as pafs

    fs, path, prefix = _split(folder)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=recursive))
    except OSError as exc:
        raise DatasetError(f"cannot list {folder}: {exc}") from exc
    return [(prefix + i.path, i.type == pafs.FileType.Directory) for i in infos]


def files(folder: Location) -> list[Location]:
    """The files directly inside `folder`, sorted ([] when it does not exist)."""
    if isinstance(folder, str):
        return sorted(uri for uri, is_dir in _entries(folder) if not is_dir)
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def files_below(folder: Location, ending: str) -> list[Location]:
    """Every file under `folder` (any depth) whose name ends with `ending`, sorted."""
    if isinstance(folder, str):
        return sorted(uri for uri, is_dir in _entries(folder, recursive=True) if not is_dir and uri.endswith(ending))
    return sorted(folder.rglob(f"*{ending}"))


def folders(folder: Location) -> list[Location]:
    """The sub-folders directly inside `folder`, sorted."""
    if isinstance(folder, str):
        return sorted(uri for uri, is_dir in _entries(folder) if is_dir)
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def is_folder(loc: Location) -> bool:
    """True for a folder, or a prefix in a bucket with at least one object under it."""
    if isinstance(loc, str):
        import pyarrow.fs as pafs

        fs, path, _ = _split(loc)
        try:
            return fs.get_file_info(path).type == pafs.FileType.Directory
        except OSError as exc:
            raise DatasetError(f"cannot read {loc}: {exc}") from exc
    return loc.is_dir()


def read(loc: Location) -> bytes:
    """The whole file: from disk, or one GET of the object."""
    if isinstance(loc, Path):
        try:
            return loc.read_bytes()
        except FileNotFoundError as exc:
            raise DatasetError(f"{loc} does not exist") from exc
    try:
        return storage.read_bytes(loc)  # one buffered GET
    except RaySegmentError as exc:
        raise DatasetError(str(exc)) from exc.__cause__  # keeps FileNotFoundError for read_if_exists


def read_if_exists(loc: Location) -> bytes | None:
    if isinstance(loc, Path):
        return loc.read_bytes() if loc.is_file() else None
    try:
        return read(loc)
    except DatasetError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            return None
        raise
