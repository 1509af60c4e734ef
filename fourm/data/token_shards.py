"""fourm's token set format: per-modality ``.npy`` token arrays in shards, a card written last.

A token set directory holds::

    tokens.json                     format_version, kind "tokens", modalities (vocab_size,
                                    length, dtype, tokenizer_sha256), splits, num_samples,
                                    shard list (name, split, num_samples, files with sha256
                                    and size, provenance), the caller's meta; written last
    shards/NAME.ids.npy             sample ids, a fixed-width unicode array (no pickle)
    shards/NAME.MODALITY.npy        a C-contiguous (num_samples, length) token array: int16
                                    when vocab_size <= 32767, else int32; memory-mappable

A set without ``tokens.json`` was never finished and is not read. Readers verify every
file's sha256 against ``tokens.json`` and every token id against its modality's vocab.
In S3 a set is published with ``ObjectStore.publish_set`` (its ``_SET.json`` last);
``TokenSet.open("s3://bucket/prefix")`` fetches shards one at a time, verified, and
keeps nothing beyond the call that fetched them.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fourm.data.codecs import load_npy
from fourm.data.format import DatasetError, LocalSource, Source
from fourm.io import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file

if TYPE_CHECKING:
    from fourm.modalities import Modality
    from fourm.storage.object_store import ObjectStore

TOKENS_CARD = "tokens.json"
SHARD_DIR = "shards"
FORMAT_VERSION = 1
KIND = "tokens"
IDS = "ids"
INT16_MAX_VOCAB = 32767  # int16 holds ids 0..32766 (vocab <= 32767)

_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_RESERVED = {"format_version", "kind", "modalities", "splits", "num_samples", "shards"}


class TokenSetError(ValueError):
    """A token set on disk or in S3 is malformed; the message names file, shard and sample."""


def _abbrev(digest: str) -> str:
    return f"{digest[:12]}…"


# -- modality specs ------------------------------------------------------------------


@dataclass(frozen=True)
class ModalitySpec:
    """What a token set stores of one modality: ids in [0, vocab_size), ``length`` per sample."""

    vocab_size: int
    length: int
    tokenizer_sha256: str = ""

    def __post_init__(self) -> None:
        if self.vocab_size <= 0:
            raise TokenSetError(f"vocab_size must be > 0, got {self.vocab_size}")
        if self.length <= 0:
            raise TokenSetError(f"length must be > 0, got {self.length}")

    @property
    def dtype(self) -> str:
        return "int16" if self.vocab_size <= INT16_MAX_VOCAB else "int32"

    def to_card(self) -> dict[str, Any]:
        return {**asdict(self), "dtype": self.dtype}

    @staticmethod
    def from_card(entry: Mapping[str, Any]) -> ModalitySpec:
        return ModalitySpec(
            int(entry["vocab_size"]), int(entry["length"]), str(entry.get("tokenizer_sha256", ""))
        )

    @staticmethod
    def for_modality(modality: Modality | str, tokenizer_sha256: str = "") -> ModalitySpec:
        """The spec of a registered modality (``fourm.modalities``): its vocab and ``num_tokens``."""
        from fourm.modalities import get_modality

        m = get_modality(modality) if isinstance(modality, str) else modality
        return ModalitySpec(m.vocab_size, m.num_tokens, tokenizer_sha256)


def shard_file(shard: str, member: str) -> str:
    """Relative path of one shard file: ``shards/<shard>.<member>.npy`` (member: ``ids`` or a modality)."""
    return f"{SHARD_DIR}/{shard}.{member}.npy"


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise TokenSetError(f"{what} {name!r} must be non-empty and use only letters, digits, '_' and '-'")


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _first_out_of_vocab(tokens: np.ndarray, vocab_size: int) -> tuple[int, int] | None:
    """(row, token id) of the first id outside [0, vocab_size), or None. Cheap when all are fine."""
    if tokens.size == 0:
        return None
    if int(tokens.min()) >= 0 and int(tokens.max()) < vocab_size:
        return None
    bad = (tokens < 0) | (tokens >= vocab_size)
    row, col = np.argwhere(bad)[0]
    return int(row), int(tokens[row, col])


def _vocab_rule(value: int, vocab_size: int) -> str:
    return f"token id {value} outside vocab [0, {vocab_size})"


# -- writing ---------------------------------------------------------------------------


class TokenSetWriter:
    """Write a token set directory shard by shard; ``finish`` writes ``tokens.json`` last.

    A stale ``tokens.json`` under ``root`` is removed first, so until ``finish`` the
    directory is an unfinished set that readers refuse. Shards appear in the card
    sorted by name, so the card does not depend on the order shards were added in
    (e.g. after a resume).
    """

    def __init__(self, root: Path | str, modalities: Mapping[str, ModalitySpec]):
        self.root = Path(root)
        if not modalities:
            raise TokenSetError("a token set needs at least one modality")
        for name in modalities:
            _check_name("modality", name)
            if name == IDS:
                raise TokenSetError(f"modality name {IDS!r} is reserved for the sample ids")
        self.modalities = dict(modalities)
        (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        (self.root / TOKENS_CARD).unlink(missing_ok=True)
        self._shards: dict[str, dict[str, Any]] = {}
        self._ids: dict[str, str] = {}  # sample id -> shard, to refuse duplicates

    def _check_new_shard(self, name: str, split: str, ids: Sequence[str]) -> None:
        _check_name("shard name", name)
        _check_name(f"token shard {name}: split", split)
        if name in self._shards:
            raise TokenSetError(f"token shard {name}: added twice")
        if len(ids) == 0:
            raise TokenSetError(f"token shard {name}: no samples; a shard needs at least one")
        seen: set[str] = set()
        for sid in ids:
            if not isinstance(sid, str) or not sid:
                raise TokenSetError(f"token shard {name}: sample id {sid!r} must be a non-empty string")
            if sid in seen or sid in self._ids:
                other = name if sid in seen else self._ids[sid]
                raise TokenSetError(f"token shard {name}: sample {sid!r} is already in shard {other}")
            seen.add(sid)

    def add_shard(
        self,
        name: str,
        split: str,
        ids: Sequence[str],
        arrays: Mapping[str, np.ndarray],
        provenance: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Validate then write one shard; returns its card entry.

        ``arrays`` maps every modality of the set to a (len(ids), length) integer array.
        Any violation raises ``TokenSetError`` before a file of the shard is written.
        """
        ids = [str(i) if isinstance(i, np.str_) else i for i in ids]
        self._check_new_shard(name, split, ids)
        missing = sorted(set(self.modalities) - set(arrays))
        extra = sorted(set(arrays) - set(self.modalities))
        if missing or extra:
            raise TokenSetError(
                f"token shard {name}: modalities differ from the set's "
                f"(missing {missing or 'none'}, unexpected {extra or 'none'})"
            )
        converted: dict[str, np.ndarray] = {}
        for modality, spec in self.modalities.items():
            a = np.asarray(arrays[modality])
            where = f"token shard {name}, modality {modality!r}"
            if a.dtype.kind not in "iu":
                raise TokenSetError(f"{where}: dtype {a.dtype} is not an integer type")
            if a.shape != (len(ids), spec.length):
                raise TokenSetError(
                    f"{where}: shape {a.shape} is not ({len(ids)} samples, {spec.length} tokens)"
                )
            bad = _first_out_of_vocab(a, spec.vocab_size)
            if bad is not None:
                row, value = bad
                raise TokenSetError(
                    f"token shard {name}: sample {ids[row]!r}, modality {modality!r}: "
                    f"{_vocab_rule(value, spec.vocab_size)}"
                )
            converted[modality] = np.ascontiguousarray(a, dtype=spec.dtype)
        width = max(len(i) for i in ids)
        converted[IDS] = np.array(ids, dtype=f"<U{width}")

        files: dict[str, dict[str, Any]] = {}
        for member in [IDS, *self.modalities]:
            rel = shard_file(name, member)
            data = _npy_bytes(converted[member])
            atomic_write_bytes(self.root / rel, data)
            files[member] = {"path": rel, "sha256": sha256_bytes(data), "size": len(data)}
        entry = {
            "name": name,
            "split": split,
            "num_samples": len(ids),
            "files": files,
            "provenance": dict(provenance or {}),
        }
        self._register(entry, ids)
        return entry

    def add_existing_shard(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """Adopt a shard whose files are already under ``root`` (e.g. fetched for a resume).

        ``entry`` is a card entry as ``add_shard`` returns it; every file is checked
        against its sha256 and size, and its contents against the set's modalities.
        """
        name = entry.get("name", "")
        files = entry.get("files", {})
        expected = {IDS, *self.modalities}
        if set(files) != expected:
            raise TokenSetError(
                f"token shard {name}: files {sorted(files)} do not match the set's {sorted(expected)}"
            )
        arrays: dict[str, np.ndarray] = {}
        for member, info in files.items():
            rel = shard_file(name, member) if isinstance(name, str) else ""
            if info.get("path") != rel:
                raise TokenSetError(f"token shard {name}: {member} path {info.get('path')!r} is not {rel!r}")
            path = self.root / rel
            if not path.is_file():
                raise TokenSetError(f"{path}: missing")
            if path.stat().st_size != info.get("size"):
                raise TokenSetError(
                    f"{path}: size {path.stat().st_size} differs from the entry ({info.get('size')})"
                )
            data = path.read_bytes()
            actual = sha256_bytes(data)
            if actual != info.get("sha256"):
                raise TokenSetError(
                    f"{path}: sha256 {_abbrev(actual)} differs from the entry "
                    f"({_abbrev(str(info.get('sha256')))})"
                )
            arrays[member] = _parse_npy(data, str(path))
        ids = [str(i) for i in arrays[IDS]]
        self._check_new_shard(name, entry.get("split", ""), ids)
        if entry.get("num_samples") != len(ids):
            raise TokenSetError(
                f"token shard {name}: num_samples {entry.get('num_samples')} but {len(ids)} ids"
            )
        for modality, spec in self.modalities.items():
            _check_tokens(
                arrays[modality], spec, modality, name, ids, str(self.root / files[modality]["path"])
            )
        clean = {
            "name": name,
            "split": entry["split"],
            "num_samples": len(ids),
            "files": {
                m: {"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for m, f in files.items()
            },
            "provenance": dict(entry.get("provenance") or {}),
        }
        self._register(clean, ids)
        return clean

    def _register(self, entry: dict[str, Any], ids: Iterable[str]) -> None:
        self._shards[entry["name"]] = entry
        for sid in ids:
            self._ids[sid] = entry["name"]

    @property
    def shards(self) -> list[dict[str, Any]]:
        return [self._shards[k] for k in sorted(self._shards)]

    def finish(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Write ``tokens.json`` (atomically, last) and return the card."""
        meta = dict(meta or {})
        clash = sorted(_RESERVED & set(meta))
        if clash:
            raise TokenSetError(f"meta keys {clash} are reserved by the token set card")
        shards = self.shards
        splits: dict[str, int] = {}
        for s in shards:
            splits[s["split"]] = splits.get(s["split"], 0) + s["num_samples"]
        card = {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "modalities": {m: spec.to_card() for m, spec in self.modalities.items()},
            "splits": dict(sorted(splits.items())),
            "num_samples": sum(splits.values()),
            "shards": shards,
            **meta,
        }
        atomic_write_json(self.root / TOKENS_CARD, card)
        return card


# -- reading ---------------------------------------------------------------------------


def _parse_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return load_npy(data)
    except (ValueError, OSError, EOFError) as err:
        raise TokenSetError(f"{where}: not a readable .npy array: {err}") from None


def _check_tokens(
    tokens: np.ndarray, spec: ModalitySpec, modality: str, shard: str, ids: Sequence[str], where: str
) -> None:
    if tokens.dtype != np.dtype(spec.dtype):
        raise TokenSetError(f"{where}: dtype {tokens.dtype} is not the card's {spec.dtype}")
    if tokens.shape != (len(ids), spec.length):
        raise TokenSetError(
            f"{where}: shape {tokens.shape} is not ({len(ids)} samples, {spec.length} tokens)"
        )
    bad = _first_out_of_vocab(tokens, spec.vocab_size)
    if bad is not None:
        row, value = bad
        raise TokenSetError(
            f"{where}: shard {shard}, sample {ids[row]!r}, modality {modality!r}: "
            f"{_vocab_rule(value, spec.vocab_size)}"
        )


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
                f"{self.describe(relpath)}: sha256 {_abbrev(actual)} differs from the set manifest "
                f"({_abbrev(part['sha256'])})"
            )
        return data

    def describe(self, relpath: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{relpath}"


def _check_card(card: Any, where: str) -> None:
    try:
        _check_card_fields(card, where)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        if isinstance(err, TokenSetError):
            raise
        raise TokenSetError(f"{where}: malformed card ({type(err).__name__}: {err})") from None


def _check_card_fields(card: Any, where: str) -> None:
    if not isinstance(card, dict):
        raise TokenSetError(f"{where}: not a JSON object")
    if card.get("kind") != KIND:
        raise TokenSetError(f"{where}: kind {card.get('kind')!r} is not {KIND!r}")
    if card.get("format_version") != FORMAT_VERSION:
        raise TokenSetError(
            f"{where}: format_version {card.get('format_version')!r} is not {FORMAT_VERSION} "
            "(the one this code reads)"
        )
    for key in ("modalities", "splits", "num_samples", "shards"):
        if key not in card:
            raise TokenSetError(f"{where}: no {key!r}")
    counts: dict[str, int] = {}
    names: set[str] = set()
    for s in card["shards"]:
        if s["name"] in names:
            raise TokenSetError(f"{where}: shard {s['name']} listed twice")
        names.add(s["name"])
        counts[s["split"]] = counts.get(s["split"], 0) + int(s["num_samples"])
        want = {IDS, *card["modalities"]}
        if set(s["files"]) != want:
            raise TokenSetError(
                f"{where}: shard {s['name']} lists files {sorted(s['files'])}, not {sorted(want)}"
            )
    if counts != card["splits"] or sum(counts.values()) != card["num_samples"]:
        raise TokenSetError(f"{where}: splits/num_samples do not add up to the shards' sample counts")


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
            _check_card(card, source.describe(TOKENS_CARD))
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
                    f"{self.source.describe(rel)}: sha256 {_abbrev(actual)} differs from "
                    f"{TOKENS_CARD} ({_abbrev(info['sha256'])})"
                )
        return _parse_npy(data, self.source.describe(rel))

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
            _check_tokens(tokens, self.modalities[m], m, name, id_list, where)
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
    _check_card(card, str(card_path))
    files: dict[str, Path] = {TOKENS_CARD: card_path}
    for entry in card["shards"]:
        for info in entry["files"].values():
            path = root / info["path"]
            if not path.is_file():
                raise TokenSetError(f"{path}: missing")
            actual = sha256_file(path)
            if actual != info["sha256"]:
                raise TokenSetError(
                    f"{path}: sha256 {_abbrev(actual)} differs from {TOKENS_CARD} ({_abbrev(info['sha256'])})"
                )
            files[info["path"]] = path
    bucket, prefix = split_s3_uri(uri)
    store.ensure_bucket(bucket)
    return store.publish_set(bucket, prefix, files)
