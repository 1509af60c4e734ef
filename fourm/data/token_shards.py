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

This module holds the format (constants, ``ModalitySpec``, the checks every reader and
writer applies) and ``TokenSetWriter``; reading, validating and publishing a finished
set are in ``fourm/data/token_set.py``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fourm.data.codecs import load_npy
from fourm.io import atomic_write_bytes, atomic_write_json, sha256_bytes

if TYPE_CHECKING:
    from fourm.modalities import Modality

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


def short_digest(digest: str) -> str:
    """The first 12 hex digits of a sha256, for error messages."""
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


# -- checks every reader applies ---------------------------------------------------------


def parse_npy(data: bytes, where: str) -> np.ndarray:
    """A shard file's bytes as an array (no pickle); ``TokenSetError`` naming ``where`` if unreadable."""
    try:
        return load_npy(data)
    except (ValueError, OSError, EOFError) as err:
        raise TokenSetError(f"{where}: not a readable .npy array: {err}") from None


def check_tokens(
    tokens: np.ndarray, spec: ModalitySpec, modality: str, shard: str, ids: Sequence[str], where: str
) -> None:
    """Raise ``TokenSetError`` unless ``tokens`` has the card's dtype and shape and all ids fit the vocab."""
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


def check_card(card: Any, where: str) -> None:
    """Raise ``TokenSetError`` unless ``card`` is a well-formed ``tokens.json`` of this format version."""
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
                    f"{path}: sha256 {short_digest(actual)} differs from the entry "
                    f"({short_digest(str(info.get('sha256')))})"
                )
            arrays[member] = parse_npy(data, str(path))
        ids = [str(i) for i in arrays[IDS]]
        self._check_new_shard(name, entry.get("split", ""), ids)
        if entry.get("num_samples") != len(ids):
            raise TokenSetError(
                f"token shard {name}: num_samples {entry.get('num_samples')} but {len(ids)} ids"
            )
        for modality, spec in self.modalities.items():
            check_tokens(
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
