"""A small S3 interface over the ``minio`` SDK with integrity checks and retries.

Every object written carries its sha256 as user metadata; every read verifies it.
A *set* (a dataset, a shard set) is published by uploading its parts and then
its manifest ``_SET.json``; readers only trust sets whose manifest exists.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import urllib3
from minio import Minio
from minio.error import S3Error

from fourm.io import canonical_json, sha256_bytes, sha256_file
from fourm.settings import Settings

SET_MANIFEST = "_SET.json"
SHA_META = "sha256"
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024

T = TypeVar("T")


class StorageError(RuntimeError):
    """An S3 operation failed; the message names bucket and key (``code``: the S3 error code)."""

    def __init__(self, message: str, code: str | None = None, transient: bool = False):
        super().__init__(message)
        self.code = code
        self.transient = transient  # the server was unreachable or failed (5xx), not the request


class IntegrityError(StorageError):
    """An object's bytes do not match its recorded sha256."""


class SetNotPublished(StorageError):
    """A set has no manifest, so it was never (completely) published."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None


_TRANSIENT = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, OSError)
_RETRY_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}


def _retryable(err: S3Error) -> bool:
    """Server-side trouble (e.g. a restarted server whose volumes are not back yet)."""
    status = getattr(err.response, "status", 0) or 0
    return err.code in _RETRY_CODES or status >= 500


class ObjectStore:
    """S3 object store; build with ``ObjectStore.from_settings(settings)``."""

    def __init__(
        self,
        client: Minio,
        retries: int = 5,
        backoff_seconds: float = 0.5,
        endpoint: str = "",
    ):
        self.client = client
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.endpoint = endpoint

    @staticmethod
    def from_settings(settings: Settings, retries: int = 5, backoff_seconds: float = 0.5) -> ObjectStore:
        # Short connect timeout and no urllib3-level retries: our own loop retries
        # with backoff and names the object in the final error.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=3, read=60),
            retries=False,
            maxsize=8,
        )
        client = Minio(
            settings.s3_host,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )
        return ObjectStore(client, retries, backoff_seconds, settings.s3_endpoint)

    # -- retries -----------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; retry connection errors and server-side (5xx) errors with backoff.

        Other S3 errors (missing key, bad credentials) are not retried; every
        failure becomes a ``StorageError`` whose message names the operation.
        """
        delay = self.backoff_seconds
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except S3Error as err:
                if not _retryable(err) or attempt == self.retries:
                    raise StorageError(
                        f"{what}: {err.code}: {err.message}", code=err.code, transient=_retryable(err)
                    ) from None
            except _TRANSIENT as err:
                if attempt == self.retries:
                    raise StorageError(
                        f"{what}: S3 endpoint {self.endpoint or '?'} unreachable after "
                        f"{self.retries + 1} attempts: {type(err).__name__}",
                        transient=True,
                    ) from err
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")

    # -- buckets -----------------------------------------------------------------

    def ensure_bucket(self, bucket: str) -> None:
        if self._call(f"check bucket {bucket}", lambda: self.client.bucket_exists(bucket)):
            return
        try:
            self._call(f"create bucket {bucket}", lambda: self.client.make_bucket(bucket))
        except StorageError as err:
            if err.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def healthy(self) -> bool:
        try:
            self.client.list_buckets()
            return True
        except Exception:
            return False

    # -- objects -----------------------------------------------------------------

    def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        digest = sha256_bytes(data)
        self._call(
            f"put s3://{bucket}/{key}",
            lambda: self.client.put_object(
                bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata={SHA_META: digest},
            ),
        )
        return digest

    def put_file(self, bucket: str, key: str, path: Path | str) -> str:
        """Upload a file (multipart above 64 MiB); returns its sha256."""
        path = Path(path)
        digest = sha256_file(path)
        size = path.stat().st_size
        part = PART_SIZE if size > MULTIPART_THRESHOLD else 0
        self._call(
            f"put s3://{bucket}/{key}",
            lambda: self.client.fput_object(
                bucket, key, str(path), metadata={SHA_META: digest}, part_size=part
            ),
        )
        return digest

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        st = self._call(f"stat s3://{bucket}/{key}", lambda: self.client.stat_object(bucket, key))
        meta = {k.lower(): v for k, v in (st.metadata or {}).items()}
        sha = meta.get(f"x-amz-meta-{SHA_META}")
        return ObjectInfo(key=key, size=st.size or 0, sha256=sha)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        """Object bytes, verified against the sha256 stored at write time."""

        def fetch() -> tuple[bytes, str | None]:
            resp = self.client.get_object(bucket, key)
            try:
                meta = {k.lower(): v for k, v in resp.headers.items()}
                return resp.read(), meta.get(f"x-amz-meta-{SHA_META}")
            finally:
                resp.close()
                resp.release_conn()

        data, expected = self._call(f"get s3://{bucket}/{key}", fetch)
        if expected is None:
            raise IntegrityError(f"s3://{bucket}/{key}: no sha256 metadata; refusing unverified object")
        actual = sha256_bytes(data)
        if actual != expected:
            raise IntegrityError(
                f"s3://{bucket}/{key}: sha256 mismatch (stored {expected[:12]}…, read {actual[:12]}…)"
            )
        return data

    def get_file(self, bucket: str, key: str, path: Path | str) -> str:
        data = self.get_bytes(bucket, key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        return sha256_bytes(data)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self._call(f"stat s3://{bucket}/{key}", lambda: self.client.stat_object(bucket, key))
            return True
        except StorageError as err:
            if err.code in _MISSING_CODES:
                return False
            raise

    def list(self, bucket: str, prefix: str = "") -> Iterator[str]:
        objs = self._call(
            f"list s3://{bucket}/{prefix}",
            lambda: list(self.client.list_objects(bucket, prefix=prefix, recursive=True)),
        )
        for obj in objs:
            yield obj.object_name

    def delete(self, bucket: str, key: str) -> None:
        self._call(f"delete s3://{bucket}/{key}", lambda: self.client.remove_object(bucket, key))

    # -- sets --------------------------------------------------------------------

    def stored_sha256(self, bucket: str, key: str) -> str | None:
        """The sha256 recorded with an object, or None when there is no such object."""
        try:
            return self.stat(bucket, key).sha256
        except StorageError as err:
            if err.code in _MISSING_CODES:
                return None
            raise

    def publish_set(
        self, bucket: str, prefix: str, files: dict[str, Path], skip_unchanged: bool = True
    ) -> dict:
        """Upload ``files`` (relative name -> local path) under ``prefix``, manifest last.

        With ``skip_unchanged``, a part already stored with the same sha256 is not sent again
        (a rerun after an interrupted publish uploads only what is missing).
        """
        prefix = prefix.strip("/")
        parts = {}
        for rel, path in sorted(files.items()):
            key = f"{prefix}/{rel}"
            local = sha256_file(path)
            if skip_unchanged and self.stored_sha256(bucket, key) == local:
                digest = local
            else:
                digest = self.put_file(bucket, key, path)
            parts[rel] = {"sha256": digest, "size": Path(path).stat().st_size}
        manifest = {"prefix": prefix, "parts": parts}
        self.put_bytes(bucket, f"{prefix}/{SET_MANIFEST}", canonical_json(manifest), "application/json")
        return manifest

    def read_set_manifest(self, bucket: str, prefix: str) -> dict:
        """The set's manifest; raises ``SetNotPublished`` when it is missing."""
        prefix = prefix.strip("/")
        if not self.exists(bucket, f"{prefix}/{SET_MANIFEST}"):
            raise SetNotPublished(
                f"s3://{bucket}/{prefix}: no {SET_MANIFEST}; the set was never completely published"
            )
        return json.loads(self.get_bytes(bucket, f"{prefix}/{SET_MANIFEST}"))

    def read_set_part(self, bucket: str, prefix: str, manifest: dict, rel: str) -> bytes:
        """One part of a published set, checked against the set manifest too."""
        prefix = prefix.strip("/")
        if rel not in manifest["parts"]:
            raise StorageError(f"s3://{bucket}/{prefix}: {rel} is not part of the published set")
        data = self.get_bytes(bucket, f"{prefix}/{rel}")
        if sha256_bytes(data) != manifest["parts"][rel]["sha256"]:
            raise IntegrityError(f"s3://{bucket}/{prefix}/{rel}: differs from the set manifest")
        return data


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``('bucket', 'some/prefix')``."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, prefix.strip("/")
