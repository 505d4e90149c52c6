"""Keys and bytes with the two conditional writes a registry needs, on a folder or an S3 bucket.

A registry shared by processes on different machines cannot lock a file: what it can rely on is
the store itself refusing a write whose precondition no longer holds. Both backends offer

- `put_new(key, data)`: create the key only if it is absent (S3 `If-None-Match: *`; a folder:
  `link(2)` of a finished temporary file, which fails if the name exists);
- `put_if(key, data, tag)`: replace the key only if it still holds the bytes read with `tag`
  (S3 `If-Match: <ETag>`; a folder: the same check under an exclusive lock on the key);

so version numbers and alias moves are decided by the store, never by a reader's stale view.
Every write is all-or-nothing: a reader sees the old bytes or the new ones.

S3 goes through boto3 because pyarrow.fs and fsspec expose no conditional put. Credentials,
region and endpoint come only from the standard provider chain and environment
(`AWS_ACCESS_KEY_ID`..., `AWS_ENDPOINT_URL` for an S3-compatible server), never from a config.
`gs://` is refused with an explanation: GCS's `ifGenerationMatch` backend is not written yet.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from raysegment.errors import RaySegmentError
from raysegment.storage import (
    atomic_write_bytes,
    check_not_placeholder,
    durable_temp_beside,
    fsync_dir,
    is_uri,
    sha256_hex,
)


class StoreError(RaySegmentError):
    """The object store cannot be reached or refused a request for a reason other than a precondition."""


class ObjectStore(Protocol):
    uri: str
    is_local: bool

    def get(self, key: str) -> bytes | None: ...
    def get_tagged(self, key: str) -> tuple[bytes, str] | None: ...
    def put(self, key: str, data: bytes) -> None: ...
    def put_new(self, key: str, data: bytes) -> bool: ...
    def put_if(self, key: str, data: bytes, tag: str | None) -> bool: ...
    def children(self, prefix: str) -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def copy(self, source: str, key: str) -> bool: ...
    def delete_tree(self, prefix: str) -> None: ...
    def location(self, key: str) -> str: ...


def open_store(uri: str | os.PathLike) -> ObjectStore:
    """A local path or `file://` -> FolderStore; `s3://bucket/prefix` -> S3Store."""
    text = str(uri)
    check_not_placeholder(text)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        if not bucket:
            raise StoreError(f"{text}: no bucket name (s3://BUCKET/PREFIX)")
        return S3Store(bucket, prefix)
    if is_uri(text) and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        raise StoreError(
            f"{text}: {scheme}:// registries are not supported yet (they need a conditional-write backend); "
            f"use s3:// (AWS S3 or a store with S3 conditional writes, e.g. MinIO) or a folder"
        )
    return FolderStore(Path(text.removeprefix("file://")).expanduser().resolve())


CAS_ATTEMPTS = 200


def update_json(
    store: ObjectStore, key: str, change: Callable[[Any], bool], parse: Callable[[bytes | None], Any]
) -> Any:
    """Read a JSON document, change it in place and compare-and-swap it until the swap wins (or
    `change` returns False: nothing to write). `parse` turns the stored bytes (None: absent) into the
    document. Returns the document as written (or as read, when unchanged)."""
    for attempt in range(CAS_ATTEMPTS):
        tagged = store.get_tagged(key)
        doc = parse(tagged[0] if tagged else None)
        if not change(doc):
            return doc
        if store.put_if(key, json.dumps(doc, indent=1).encode(), tagged[1] if tagged else None):
            return doc
        time.sleep(min(0.001 * 2**attempt, 0.2))  # another writer won this round
    raise StoreError(f"{store.uri}/{key}: still contended after {CAS_ATTEMPTS} attempts")


class FolderStore:
    """Keys are relative paths under `root`; temporary files start with '.' and are never listed."""

    is_local = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = str(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        data = self.get(key)
        return None if data is None else (data, sha256_hex(data))

    def put(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self.path(key), data)

    def put_new(self, key: str, data: bytes) -> bool:
        target = self.path(key)
        tmp = durable_temp_beside(target, data)
        try:
            os.link(tmp, target)  # atomic, and fails if the name is taken
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        fsync_dir(target.parent)
        return True

    def put_if(self, key: str, data: bytes, tag: str | None) -> bool:
        with self._locked(key):
            current = self.get_tagged(key)
            if (current[1] if current else None) != tag:
                return False
            self.put(key, data)
            return True

    def children(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def copy(self, source: str, key: str) -> bool:
        """`key` as a second name of `source`'s bytes (a hard link: no data copied); False when
        `source` is gone."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.path(source), target)
        except FileNotFoundError:
            return False
        return True

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def location(self, key: str) -> str:
        """Where a dataset reader finds `key` (a path for a folder store)."""
        return str(self.path(key))

    @contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """An exclusive advisory lock beside the key (released by the kernel if the holder dies)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.with_name(f".{target.name}.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class S3Store:
    """Keys under `s3://bucket/prefix/`; conditional writes are S3's own (412 when they lose)."""

    is_local = False

    def __init__(self, bucket: str, prefix: str) -> None:
        import boto3  # imported on use: local registries never need it
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client: Any = boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes | None:
        tagged = self.get_tagged(key)
        return None if tagged is None else tagged[0]

    def get_tagged(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise StoreError(f"{self.uri}/{key}: {exc}") from exc
        return response["Body"].read(), response["ETag"]

    def put(self, key: str, data: bytes) -> None:
        self._put(key, data)

    def put_new(self, key: str, data: bytes) -> bool:
        return self._put(key, data, IfNoneMatch="*")

    def put_if(self, key: str, data: bytes, tag: str | None) -> bool:
        return self.put_new(key, data) if tag is None else self._put(key, data, IfMatch=tag)

    def children(self, prefix: str) -> list[str]:
        base = self._key(prefix.rstrip("/") + "/" if prefix else "")
        names: set[str] = set()
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            ):
                names |= {p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])}
                names |= {o["Key"][len(base) :] for o in page.get("Contents", [])}
        except Exception as exc:
            raise StoreError(f"{self.uri}/{prefix}: {exc}") from exc
        return sorted(n for n in names if n and not n.startswith("."))

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            raise StoreError(f"{self.uri}/{key}: {exc}") from exc

    def copy(self, source: str, key: str) -> bool:
        """A server-side copy (CopyObject: the bytes never leave the store); False when `source` is gone."""
        try:
            self.client.copy_object(
                Bucket=self.bucket, Key=self._key(key), CopySource={"Bucket": self.bucket, "Key": self._key(source)}
            )
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return False
            raise StoreError(f"{self.uri}/{key}: {exc}") from exc
        return True

    def delete_tree(self, prefix: str) -> None:
        base = self._key(prefix.rstrip("/") + "/")
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        except Exception as exc:
            raise StoreError(f"{self.uri}/{prefix}: {exc}") from exc

    def location(self, key: str) -> str:
        """Where a dataset reader finds `key` (its s3:// URI)."""
        return f"s3://{self.bucket}/{self._key(key)}"

    def _put(self, key: str, data: bytes, **condition: str) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
        except Exception as exc:
            # 412: the precondition failed; 409: a concurrent conditional write is in flight (retry).
            if condition and _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return False
            raise StoreError(f"{self.uri}/{key}: {exc}") from exc
        return True


def _code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))
