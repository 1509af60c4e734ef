"""Reading a finished token set (``fourm/data/token_shards.py`` has the format), from a
local directory or a published S3 set; validating every shard; publishing a set to S3.

Every file read is checked against its sha256 in ``tokens.json`` (or the S3 set's
``_SET.json``) and every token id against its modality's vocabulary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fourm.data.format import DatasetError, LocalSource, Source
from fourm.data.token_shards import (
    IDS,
    TOKENS_CARD,
    ModalitySpec,
    TokenSetError,
    check_card,
    check_tokens,
    parse_npy,
    short_digest,
)
from fourm.io import sha256_bytes, sha256_file

if TYPE_CHECKING:
    from fourm.storage.object_store import ObjectStore


class _LocalSource(LocalSource):
    """A token set directory (the dataset format's local source, with token-set errors)."""

    def read(self, relpath: str) -> bytes:
        try:
            return super().read(relpath)
        except DatasetError as err:
            raise TokenSetError(str(err)) from None


class _S3Source:
    """A published set under s3://bucket/prefix; every part is checked against ``_SET.json``."""

    def __init__(self, store: ObjectStore, bucket: str, prefix: str, manifest: dict | None = None):
        from fourm.storage.object_store import SetNotPublished, StorageError

        self.store = store
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if manifest is None:
            try:
                manifest = store.read_set_manifest(bucket, self.prefix)
            except SetNotPublished as err:
                raise TokenSetError(f"{err}; the token set was never finished, not reading it") from None
            except StorageError as err:
                raise TokenSetError(str(err)) from None
        self.manifest = manifest

    def __getstate__(self) -> dict[str, Any]:
        # Connections do not cross processes: a pickled copy must be given a store (``TokenSet.reopen``).
        return {**self.__dict__, "store": None}

    def read(self, relpath: str) -> bytes:
        from fourm.storage.object_store import StorageError

        if self.store is None:
            raise TokenSetError(
                f"{self.describe(relpath)}: no object store in this process; use TokenSet.reopen"
            )
        part = self.manifest.get("parts", {}).get(relpath)
        if part is None:
            raise TokenSetError(f"{self.describe(relpath)}: not part of the published set")
        try:
            data = self.store.get_bytes(self.bucket, f"{self.prefix}/{relpath}")
        except StorageError as err:
            raise TokenSetError(str(err)) from None
        actual = sha256_bytes(data)
        if actual != part["sha256"]:
            raise TokenSetError(
                f"{self.describe(relpath)}: sha256 {short_digest(actual)} differs from the set manifest "
                f"({short_digest(part['sha256'])})"
            )
        return data

    def describe(self, relpath: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{relpath}"


class TokenSet:
    """A finished token set read through a local directory or a published S3 set."""

    def __init__(self, source: Source, card: dict[str, Any] | None = None):
        self.source = source
        if card is None:
            try:
                raw = source.read(TOKENS_CARD)
            except TokenSetError:
                raise TokenSetError(
                    f"{source.describe(TOKENS_CARD)}: missing; the token set was never finished "
                    f"({TOKENS_CARD} is written last), not reading it"
                ) from None
            try:
                card = json.loads(raw)
            except json.JSONDecodeError as err:
                raise TokenSetError(f"{source.describe(TOKENS_CARD)}: not JSON: {err}") from None
            check_card(card, source.describe(TOKENS_CARD))
        self.card: dict[str, Any] = card
        self.modalities: dict[str, ModalitySpec] = {
            m: ModalitySpec.from_card(e) for m, e in card["modalities"].items()
        }
        self._by_name = {s["name"]: s for s in card["shards"]}

    @staticmethod
    def open(location: Path | str, store: ObjectStore | None = None) -> TokenSet:
        """Open a local directory or an ``s3://bucket/prefix`` published set.

        For S3, ``store`` defaults to one built from the settings (env ``FOURM_*``).
        """
        if str(location).startswith("s3://"):
            from fourm.storage.object_store import ObjectStore, split_s3_uri

            bucket, prefix = split_s3_uri(str(location))
            if store is None:
                from fourm.settings import get_settings

                store = ObjectStore.from_settings(get_settings())
            return TokenSet(_S3Source(store, bucket, prefix))
        if not Path(location).is_dir():
            raise TokenSetError(f"{location}: no such directory")
        return TokenSet(_LocalSource(location))

    def reopen(self, store: ObjectStore | None = None) -> TokenSet:
        """The same set (card and manifest not re-read) over new connections, e.g. in a forked worker."""
        src = self.source
        if isinstance(src, _S3Source):
            if store is None:
                from fourm.settings import get_settings
                from fourm.storage.object_store import ObjectStore

                store = ObjectStore.from_settings(get_settings())
            src = _S3Source(store, src.bucket, src.prefix, src.manifest)
        return TokenSet(src, self.card)

    @property
    def in_s3(self) -> bool:
        """Whether the set is read from a published S3 set (not a local directory)."""
        return isinstance(self.source, _S3Source)

    @property
    def location(self) -> str:
        return self.source.describe("").rstrip("/")

    @property
    def splits(self) -> dict[str, int]:
        return dict(self.card["splits"])

    @property
    def num_samples(self) -> int:
        return int(self.card["num_samples"])

    def shards(self, split: str | None = None) -> list[dict[str, Any]]:
        """Card entries of the shards (of ``split``), in card order."""
        return [s for s in self.card["shards"] if split is None or s["split"] == split]

    def shard(self, name: str) -> dict[str, Any]:
        try:
            return self._by_name[name]
        except KeyError:
            raise TokenSetError(f"{self.location}: no shard {name!r}") from None

    def _read_member(self, entry: Mapping[str, Any], member: str, verify: bool) -> np.ndarray:
        info = entry["files"][member]
        rel = info["path"]
        data = self.source.read(rel)
        if verify:
            actual = sha256_bytes(data)
            if actual != info["sha256"]:
                raise TokenSetError(
                    f"{self.source.describe(rel)}: sha256 {short_digest(actual)} differs from "
                    f"{TOKENS_CARD} ({short_digest(info['sha256'])})"
                )
        return parse_npy(data, self.source.describe(rel))

    def read_shard(
        self, name: str, modalities: Iterable[str] | None = None, verify: bool = True
    ) -> dict[str, np.ndarray]:
        """``{"ids": (n,) str array, modality: (n, length) int array}`` of shard ``name``.

        Each file is checked against its sha256 in ``tokens.json`` (unless ``verify`` is
        false) and every token id against its modality's vocab; problems raise
        ``TokenSetError``. ``modalities`` (default: all) limits which files are read.
        """
        entry = self.shard(name)
        wanted = list(self.modalities) if modalities is None else list(modalities)
        unknown = [m for m in wanted if m not in self.modalities]
        if unknown:
            raise TokenSetError(
                f"{self.location}: no modality {unknown}; the set has {sorted(self.modalities)}"
            )
        ids = self._read_member(entry, IDS, verify)
        where_ids = self.source.describe(entry["files"][IDS]["path"])
        if ids.dtype.kind != "U" or ids.shape != (entry["num_samples"],):
            raise TokenSetError(
                f"{where_ids}: ids {ids.dtype} {ids.shape} are not {entry['num_samples']} unicode strings"
            )
        out: dict[str, np.ndarray] = {IDS: ids}
        id_list = ids.tolist()
        for m in wanted:
            tokens = self._read_member(entry, m, verify)
            where = self.source.describe(entry["files"][m]["path"])
            check_tokens(tokens, self.modalities[m], m, name, id_list, where)
            out[m] = tokens
        return out


# -- validation and publishing ---------------------------------------------------------------


def validate_token_set(location: Path | str, store: ObjectStore | None = None) -> dict[str, Any]:
    """Read every shard of a set (hashes, shapes, vocab, unique ids); a report of counts and problems."""
    start = time.perf_counter()
    report: dict[str, Any] = {"location": str(location), "ok": False, "problems": []}
    try:
        ts = TokenSet.open(location, store)
    except TokenSetError as err:
        report["problems"].append(str(err))
        return report
    seen: dict[str, str] = {}
    per_split: dict[str, int] = {}
    shards_ok = 0
    total_bytes = 0
    for entry in ts.shards():
        try:
            arrays = ts.read_shard(entry["name"])
        except TokenSetError as err:
            report["problems"].append(str(err))
            continue
        shard_ok = True
        for sid in arrays[IDS].tolist():
            if sid in seen:
                report["problems"].append(
                    f"shard {entry['name']}: sample {sid!r} is also in shard {seen[sid]}"
                )
                shard_ok = False
            seen[sid] = entry["name"]
        shards_ok += shard_ok
        per_split[entry["split"]] = per_split.get(entry["split"], 0) + len(arrays[IDS])
        total_bytes += sum(f["size"] for f in entry["files"].values())
    report.update(
        ok=not report["problems"],
        format_version=ts.card["format_version"],
        modalities=ts.card["modalities"],
        splits=per_split,
        num_samples=sum(per_split.values()),
        shards=len(ts.shards()),
        shards_ok=shards_ok,
        bytes=total_bytes,
        seconds=round(time.perf_counter() - start, 3),
    )
    return report


def publish_token_set(store: ObjectStore, root: Path | str, uri: str) -> dict[str, Any]:
    """Upload the finished token set ``root`` to ``uri`` (its ``_SET.json`` manifest last).

    Only ``tokens.json`` and the files it lists are uploaded, each checked against its
    sha256 in ``tokens.json`` first.
    """
    from fourm.storage.object_store import split_s3_uri

    root = Path(root)
    card_path = root / TOKENS_CARD
    if not card_path.exists():
        raise TokenSetError(f"{card_path}: missing; not a finished token set")
    card = json.loads(card_path.read_text())
    check_card(card, str(card_path))
    files: dict[str, Path] = {TOKENS_CARD: card_path}
    for entry in card["shards"]:
        for info in entry["files"].values():
            path = root / info["path"]
            if not path.is_file():
                raise TokenSetError(f"{path}: missing")
            actual = sha256_file(path)
            if actual != info["sha256"]:
                raise TokenSetError(
                    f"{path}: sha256 {short_digest(actual)} differs from {TOKENS_CARD} "
                    f"({short_digest(info['sha256'])})"
                )
            files[info["path"]] = path
    bucket, prefix = split_s3_uri(uri)
    store.ensure_bucket(bucket)
    return store.publish_set(bucket, prefix, files)
