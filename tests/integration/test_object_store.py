"""ObjectStore against a real SeaweedFS S3 server: integrity, multipart, retries, sets."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import uuid
from pathlib import Path

import pytest
from minio.error import S3Error
from pydantic import SecretStr

from fourm import services
from fourm.settings import Settings
from fourm.storage import object_store as object_store_mod
from fourm.storage.object_store import (
    SET_MANIFEST,
    IntegrityError,
    ObjectStore,
    SetNotPublished,
    StorageError,
)
from tests.conftest import s3_test_settings, settings_env

pytestmark = pytest.mark.integration

BUCKET = "fourm-test-objects"


@pytest.fixture()
def bucket(store: ObjectStore) -> str:
    store.ensure_bucket(BUCKET)
    return BUCKET


@pytest.fixture()
def prefix() -> str:
    """A fresh key prefix per test, so tests never see each other's objects."""
    return f"t-{uuid.uuid4().hex[:12]}"


# -- 1. round trips ---------------------------------------------------------------


def test_round_trip_bytes_and_file(store: ObjectStore, bucket: str, prefix: str, tmp_path: Path) -> None:
    data = os.urandom(100_000) + b"fourm"
    key_b = f"{prefix}/blob.bin"
    digest = store.put_bytes(bucket, key_b, data)
    assert digest == hashlib.sha256(data).hexdigest()

    info = store.stat(bucket, key_b)
    assert info.sha256 == digest
    assert info.size == len(data)
    assert store.get_bytes(bucket, key_b) == data

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    key_f = f"{prefix}/sub/file.bin"
    fdigest = store.put_file(bucket, key_f, src)
    assert fdigest == hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.stat(bucket, key_f).sha256 == fdigest

    dst = tmp_path / "out" / "dst.bin"
    assert store.get_file(bucket, key_f, dst) == fdigest
    assert dst.read_bytes() == src.read_bytes()

    assert sorted(store.list(bucket, prefix)) == [key_b, key_f]
    assert list(store.list(bucket, f"{prefix}/sub")) == [key_f]
    assert store.exists(bucket, key_b)

    store.delete(bucket, key_b)
    assert not store.exists(bucket, key_b)
    assert list(store.list(bucket, prefix)) == [key_f]
    with pytest.raises(StorageError, match=f"s3://{bucket}/{key_b}"):
        store.get_bytes(bucket, key_b)
    with pytest.raises(StorageError, match=f"s3://{bucket}/{key_b}"):
        store.stat(bucket, key_b)


# -- 2. multipart -----------------------------------------------------------------


def test_multipart_upload_round_trips(
    store: ObjectStore, bucket: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3 requires parts of at least 5 MiB (except the last one).
    monkeypatch.setattr(object_store_mod, "MULTIPART_THRESHOLD", 1024 * 1024)
    monkeypatch.setattr(object_store_mod, "PART_SIZE", 5 * 1024 * 1024)
    src = tmp_path / "big.bin"
    payload = os.urandom(11 * 1024 * 1024 + 12345)  # 3 parts: 5 + 5 + ~1 MiB
    src.write_bytes(payload)

    key = f"{prefix}/big.bin"
    digest = store.put_file(bucket, key, src)
    assert digest == hashlib.sha256(payload).hexdigest()

    # A multipart upload's ETag is "<md5-of-md5s>-<number of parts>".
    etag = store.client.stat_object(bucket, key).etag.strip('"')
    assert etag.endswith("-3"), f"expected a 3-part multipart upload, got ETag {etag!r}"

    assert store.stat(bucket, key).sha256 == digest
    assert store.stat(bucket, key).size == len(payload)
    dst = tmp_path / "big.out"
    store.get_file(bucket, key, dst)
    assert dst.read_bytes() == payload


# -- 3./4. integrity ---------------------------------------------------------------


def test_tampered_object_is_refused(store: ObjectStore, bucket: str, prefix: str) -> None:
    key = f"{prefix}/tampered.bin"
    old_digest = store.put_bytes(bucket, key, b"the original bytes")
    evil = b"the tampered bytes!"
    store.client.put_object(bucket, key, io.BytesIO(evil), len(evil), metadata={"sha256": old_digest})
    with pytest.raises(IntegrityError) as exc:
        store.get_bytes(bucket, key)
    assert f"s3://{bucket}/{key}" in str(exc.value)
    assert "sha256" in str(exc.value)


def test_object_without_sha256_metadata_is_refused(store: ObjectStore, bucket: str, prefix: str) -> None:
    key = f"{prefix}/raw.bin"
    data = b"written by someone else"
    store.client.put_object(bucket, key, io.BytesIO(data), len(data))
    assert store.stat(bucket, key).sha256 is None
    with pytest.raises(IntegrityError) as exc:
        store.get_bytes(bucket, key)
    assert f"s3://{bucket}/{key}" in str(exc.value)
    assert "no sha256" in str(exc.value)


# -- 5. retries ------------------------------------------------------------------------


def test_retry_survives_server_restart(tmp_path: Path) -> None:
    settings = s3_test_settings(tmp_path / "home", 28633)
    services.up(settings)
    restarter: threading.Thread | None = None
    restart_errors: list[BaseException] = []
    try:
        store = ObjectStore.from_settings(settings, retries=8, backoff_seconds=0.5)
        bucket = settings.buckets.datasets
        key = "retry/object.bin"
        data = os.urandom(50_000)
        store.put_bytes(bucket, key, data)

        assert services.down(settings) is True
        assert not services.status(settings).healthy

        # With the server down and a single retry, the error names the endpoint.
        quick = ObjectStore.from_settings(settings, retries=1, backoff_seconds=0.05)
        with pytest.raises(StorageError) as exc:
            quick.get_bytes(bucket, key)
        msg = str(exc.value)
        assert settings.s3_endpoint in msg
        assert "unreachable" in msg
        assert f"s3://{bucket}/{key}" in msg

        def restart() -> None:
            try:
                time.sleep(1.5)
                services.up(settings)
            except BaseException as err:  # reported by the main thread
                restart_errors.append(err)

        restarter = threading.Thread(target=restart, daemon=True)
        restarter.start()
        t0 = time.monotonic()
        got = store.get_bytes(bucket, key)
        elapsed = time.monotonic() - t0
        restarter.join(60)
        assert not restart_errors, restart_errors
        assert got == data
        assert elapsed >= 1.0, "the read cannot have succeeded before the server came back"
        assert services.status(settings).healthy
    finally:
        if restarter is not None:
            restarter.join(60)
        services.down(settings)


# -- 6. sets -------------------------------------------------------------------------


def test_set_without_manifest_is_not_read(
    store: ObjectStore, bucket: str, prefix: str, tmp_path: Path
) -> None:
    files = {}
    for name, content in {"a.bin": b"part a" * 100, "sub/b.bin": b"part b" * 200}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        files[name] = path

    # Parts uploaded, manifest never written: an interrupted publish.
    for rel, path in files.items():
        store.put_file(bucket, f"{prefix}/{rel}", path)
    with pytest.raises(SetNotPublished) as exc:
        store.read_set_manifest(bucket, prefix)
    assert f"s3://{bucket}/{prefix}" in str(exc.value)
    assert SET_MANIFEST in str(exc.value)

    manifest = store.publish_set(bucket, prefix, files)
    assert store.exists(bucket, f"{prefix}/{SET_MANIFEST}")
    read_back = store.read_set_manifest(bucket, prefix)
    assert read_back == manifest
    assert set(read_back["parts"]) == {"a.bin", "sub/b.bin"}
    for rel, path in files.items():
        assert read_back["parts"][rel]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert read_back["parts"][rel]["size"] == path.stat().st_size
        assert store.read_set_part(bucket, prefix, read_back, rel) == path.read_bytes()

    with pytest.raises(StorageError, match="not part of the published set"):
        store.read_set_part(bucket, prefix, read_back, "c.bin")

    # Replaced after publishing, with self-consistent sha256 metadata: the object
    # alone looks fine, but it is not the part the manifest published.
    store.put_bytes(bucket, f"{prefix}/a.bin", b"a different part a")
    assert store.get_bytes(bucket, f"{prefix}/a.bin") == b"a different part a"
    with pytest.raises(IntegrityError) as exc2:
        store.read_set_part(bucket, prefix, read_back, "a.bin")
    assert f"s3://{bucket}/{prefix}/a.bin" in str(exc2.value)
    # The untouched part still reads.
    assert store.read_set_part(bucket, prefix, read_back, "sub/b.bin") == files["sub/b.bin"].read_bytes()


# -- 7. credentials ------------------------------------------------------------------


def test_wrong_credentials_fail_without_leaking_secret(
    s3_settings: Settings, store: ObjectStore, bucket: str, prefix: str
) -> None:
    secret = "nope-wrong-secret-7f3a9c"
    # model_copy does not validate: pass a SecretStr, as Settings would hold.
    bad_settings = s3_settings.model_copy(update={"s3_secret_key": SecretStr(secret)})
    bad = ObjectStore.from_settings(bad_settings, retries=1, backoff_seconds=0.05)
    key = f"{prefix}/should-not-exist.bin"

    with pytest.raises((S3Error, StorageError)) as exc:
        bad.put_bytes(bucket, key, b"nope")
    err = exc.value
    texts = [str(err), repr(err), str(err.__cause__ or ""), str(err.__context__ or "")]
    assert all(secret not in t for t in texts)
    codes = ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")
    assert any(code in str(err) for code in codes), str(err)
    assert not store.exists(bucket, key), "a write with a wrong secret must not land"

    # Reads are refused too.
    good_key = f"{prefix}/ok.bin"
    store.put_bytes(bucket, good_key, b"ok")
    with pytest.raises((S3Error, StorageError)) as exc2:
        bad.get_bytes(bucket, good_key)
    assert secret not in str(exc2.value) and secret not in repr(exc2.value)
    assert secret not in repr(bad_settings) and secret not in str(bad_settings.masked())


# -- 8. datasets ----------------------------------------------------------------------


def test_publish_and_open_dataset(
    s3_settings: Settings, store: ObjectStore, tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fourm.data.format import Dataset, DatasetError
    from fourm.data.generate import run_generate
    from fourm.params import GenerateParams
    from fourm.storage.dataset_source import publish_dataset

    # Dataset.open("s3://...") builds its store from the environment.
    for name, value in settings_env(s3_settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FOURM_S3_ACCESS_KEY", s3_settings.s3_access_key)
    monkeypatch.setenv("FOURM_S3_SECRET_KEY", s3_settings.s3_secret_key.get_secret_value())
    monkeypatch.chdir(tmp_path)  # no stray .env

    root = tmp_path / "raw"
    report = run_generate(GenerateParams(num_scenes=12, samples_per_shard=5, workers=1), root)
    assert report.num_samples == 12 and report.num_shards == 3

    bucket = s3_settings.buckets.datasets
    uri = f"s3://{bucket}/{prefix}/raw"
    manifest = publish_dataset(store, root, uri)
    local_files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert set(manifest["parts"]) == local_files
    assert "dataset.json" in local_files and "manifest.parquet" in local_files

    local = Dataset.open(root)
    remote = Dataset.open(uri)
    assert remote.card == local.card
    assert len(remote.rows) == 12
    assert remote.rows == local.rows
    assert [s["name"] for s in remote.shards] == [s["name"] for s in local.shards]
    for shard in local.shards:
        assert remote.read_shard(shard["name"]) == (root / "shards" / shard["name"]).read_bytes()
    assert [r.id for r in remote.iter_records()] == [r["id"] for r in local.rows]

    missing = f"s3://{bucket}/{prefix}/never-published"
    with pytest.raises((DatasetError, SetNotPublished)) as exc:
        Dataset.open(missing)
    assert missing in str(exc.value)
    assert "never" in str(exc.value) and "published" in str(exc.value)
