"""Token sets in a real local S3 server: publish, stream through the loader, refuse damage."""

from __future__ import annotations

import functools
import io
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fourm.data.loader import StreamLoader, TokenStream
from fourm.data.token_set import TokenSet, publish_token_set, validate_token_set
from fourm.data.token_shards import TOKENS_CARD, ModalitySpec, TokenSetError, TokenSetWriter, shard_file
from fourm.settings import Settings
from fourm.storage.object_store import SET_MANIFEST, ObjectStore

pytestmark = pytest.mark.integration

BUCKET = "fourm-test-tokens"
SPECS = {"rgb": ModalitySpec(1024, 64), "caption": ModalitySpec(8192, 16)}
SIZES = [7, 7, 7, 7, 3]


def write_set(root: Path) -> dict:
    w = TokenSetWriter(root, SPECS)
    rng = np.random.default_rng(0)
    k = 0
    for i, n in enumerate(SIZES):
        ids = [f"s{k + j:03d}" for j in range(n)]
        k += n
        w.add_shard(
            f"train-{i:06d}",
            "train",
            ids,
            {m: rng.integers(0, s.vocab_size, (n, s.length)) for m, s in SPECS.items()},
        )
    return w.finish({"source": "test"})


@pytest.fixture()
def uri() -> str:
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}/tokens"


def test_publish_and_stream(store: ObjectStore, s3_settings: Settings, tmp_path: Path, uri: str) -> None:
    card = write_set(tmp_path / "t")
    manifest = publish_token_set(store, tmp_path / "t", uri)
    assert TOKENS_CARD in manifest["parts"] and shard_file("train-000004", "caption") in manifest["parts"]

    ts = TokenSet.open(uri, store)
    assert ts.card == card
    local = TokenSet.open(tmp_path / "t")
    for entry in card["shards"]:
        remote, here = ts.read_shard(entry["name"]), local.read_shard(entry["name"])
        for key in here:
            np.testing.assert_array_equal(remote[key], here[key])
    assert validate_token_set(uri, store)["ok"]

    # Two ranks x two workers, each worker with its own connections (a factory, not the parent's store).
    factory = functools.partial(ObjectStore.from_settings, s3_settings, retries=2, backoff_seconds=0.1)
    seen: list[str] = []
    for rank in (0, 1):
        stream = TokenStream(
            uri, "train", batch_size=4, seed=3, buffer_size=6, rank=rank, world_size=2, store_factory=factory
        )
        loader = StreamLoader(stream, num_workers=2)
        for batch in loader:
            assert batch["caption"].shape == (len(batch["id"]), 16)
            seen += batch["id"]
    assert Counter(seen) == Counter(f"s{i:03d}" for i in range(sum(SIZES)))

    # The same stream read locally gives the same batches.
    def batches(location: str | Path) -> list[list[str]]:
        stream = TokenStream(location, "train", batch_size=4, seed=3, buffer_size=6, store_factory=factory)
        return [list(b["id"]) for b in StreamLoader(stream, num_workers=2)]

    assert batches(uri) == batches(tmp_path / "t")


def test_unpublished_set_is_refused(store: ObjectStore, tmp_path: Path, uri: str) -> None:
    write_set(tmp_path / "t")
    publish_token_set(store, tmp_path / "t", uri)
    bucket, _, prefix = uri[5:].partition("/")
    store.delete(bucket, f"{prefix}/{SET_MANIFEST}")  # as if the publish stopped before its manifest
    with pytest.raises(TokenSetError, match="never finished") as exc:
        TokenSet.open(uri, store)
    assert uri in str(exc.value)
    with pytest.raises(TokenSetError, match="never finished"):
        TokenStream(uri, "train", store_factory=lambda: store)
    assert not validate_token_set(uri, store)["ok"]


def test_corrupted_object_is_refused(store: ObjectStore, tmp_path: Path, uri: str) -> None:
    card = write_set(tmp_path / "t")
    publish_token_set(store, tmp_path / "t", uri)
    bucket, _, prefix = uri[5:].partition("/")
    rel = shard_file("train-000003", "rgb")
    # Different bytes under the part's key, with their own (correct) sha256 metadata.
    tokens = np.load(tmp_path / "t" / rel)
    tokens[0, 0] = (tokens[0, 0] + 1) % 1024
    buf = io.BytesIO()
    np.save(buf, tokens)
    store.put_bytes(bucket, f"{prefix}/{rel}", buf.getvalue())

    ts = TokenSet.open(uri, store)
    with pytest.raises(TokenSetError) as exc:
        ts.read_shard("train-000003")
    msg = str(exc.value)
    assert f"{uri}/{rel}" in msg and "sha256" in msg
    assert card["shards"][3]["files"]["rgb"]["sha256"][:12] in msg
    ts.read_shard("train-000002")  # the undamaged shards still read

    stream = TokenStream(uri, "train", batch_size=4, shuffle=False, store_factory=lambda: store)
    with pytest.raises(TokenSetError, match=rel):
        for _ in StreamLoader(stream):
            pass
