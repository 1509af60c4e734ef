"""Datasets in S3: publish a local dataset directory as a set, read one back."""

from __future__ import annotations

from pathlib import Path

from fourm.data.format import DATASET_CARD, DatasetError
from fourm.settings import get_settings
from fourm.storage.object_store import ObjectStore, StorageError, split_s3_uri


class S3Source:
    """A published dataset set under ``s3://bucket/prefix`` (a ``fourm.data.format.Source``)."""

    def __init__(self, store: ObjectStore, bucket: str, prefix: str):
        self.store = store
        self.bucket = bucket
        self.prefix = prefix
        try:
            self.manifest = store.read_set_manifest(bucket, prefix)
        except StorageError as err:
            raise DatasetError(str(err)) from err

    @staticmethod
    def from_uri(uri: str, store: ObjectStore | None = None) -> S3Source:
        bucket, prefix = split_s3_uri(uri)
        return S3Source(store or ObjectStore.from_settings(get_settings()), bucket, prefix)

    def read(self, relpath: str) -> bytes:
        try:
            return self.store.read_set_part(self.bucket, self.prefix, self.manifest, relpath)
        except StorageError as err:
            raise DatasetError(str(err)) from err

    def describe(self, relpath: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{relpath}"


def publish_dataset(store: ObjectStore, root: Path, uri: str) -> dict:
    """Upload the dataset directory ``root`` to ``uri`` as a set (its manifest last)."""
    if not (root / DATASET_CARD).exists():
        raise DatasetError(f"{root / DATASET_CARD}: missing; not a finished dataset")
    bucket, prefix = split_s3_uri(uri)
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    store.ensure_bucket(bucket)
    return store.publish_set(bucket, prefix, files)
