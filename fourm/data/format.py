"""fourm's dataset format: webdataset-style tar shards, a parquet manifest, a dataset card.

A dataset directory holds::

    dataset.json        kind, modalities, shard list (name, sha256, size, samples,
                        provenance), creation params; written last
    manifest.parquet    one row per sample: id, split, shard, member index, caption
                        (raw sets), sha256_<modality> and size_<modality>
    shards/NAME.tar     members ``<id>.<modality>.<ext>`` in sample order

Tars are written deterministically (fixed mtime, owner and mode), so the same
samples always give byte-identical shards and hashes. See docs/dataset-format.md.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from fourm.data.codecs import EXTENSIONS
from fourm.io import atomic_write_bytes, atomic_write_json, sha256_bytes, sha256_file

DATASET_CARD = "dataset.json"
MANIFEST = "manifest.parquet"
SHARD_DIR = "shards"
FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A dataset on disk or in S3 is malformed; the message names file and sample."""


def member_name(sample_id: str, modality: str) -> str:
    return f"{sample_id}.{modality}.{EXTENSIONS[modality]}"


def parse_member_name(name: str) -> tuple[str, str]:
    """``'syn0-0000001.rgb.png'`` -> ``('syn0-0000001', 'rgb')`` (webdataset: key = up to the first dot)."""
    sample_id, _, rest = name.partition(".")
    modality = rest.partition(".")[0]
    if not sample_id or modality not in EXTENSIONS:
        raise DatasetError(f"unexpected shard member {name!r}")
    return sample_id, modality


@dataclass
class ShardInfo:
    name: str
    sha256: str
    size: int
    num_samples: int
    provenance: dict[str, Any] = field(default_factory=dict)


class ShardWriter:
    """Write samples (already encoded per modality) into one deterministic tar."""

    def __init__(self, path: Path):
        self.path = path
        self._tar = tarfile.open(path, "w", format=tarfile.USTAR_FORMAT)
        self.num_samples = 0

    def add(self, sample_id: str, encoded: dict[str, bytes]) -> None:
        if "." in sample_id or "/" in sample_id:
            raise DatasetError(f"sample id {sample_id!r} must not contain '.' or '/'")
        for modality, data in encoded.items():
            info = tarfile.TarInfo(member_name(sample_id, modality))
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.num_samples += 1

    def close(self) -> ShardInfo:
        self._tar.close()
        return ShardInfo(
            name=self.path.name,
            sha256=sha256_file(self.path),
            size=self.path.stat().st_size,
            num_samples=self.num_samples,
        )


class DatasetWriter:
    """Write a dataset directory shard by shard; ``finish`` writes manifest and card."""

    def __init__(self, root: Path, kind: str, modalities: Iterable[str], samples_per_shard: int):
        self.root = root
        self.kind = kind
        self.modalities = list(modalities)
        self.samples_per_shard = samples_per_shard
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        self.shards: list[ShardInfo] = []
        self._writer: ShardWriter | None = None

    def add(
        self,
        sample_id: str,
        split: str,
        encoded: dict[str, bytes],
        extra: dict[str, Any] | None = None,
    ) -> None:
        if self._writer is None or self._writer.num_samples >= self.samples_per_shard:
            self.start_shard()
        row: dict[str, Any] = {
            "id": sample_id,
            "split": split,
            "shard": self._writer.path.name,
            "index": self._writer.num_samples,
        }
        row.update(extra or {})
        for modality in self.modalities:
            row[f"sha256_{modality}"] = sha256_bytes(encoded[modality])
            row[f"size_{modality}"] = len(encoded[modality])
        self._writer.add(sample_id, {m: encoded[m] for m in self.modalities})
        self.rows.append(row)

    def start_shard(self, name: str | None = None) -> None:
        """Close the open shard and start ``name`` (default: the next ``shard-NNNNNN.tar``)."""
        self.close_shard()
        name = name or f"shard-{len(self.shards):06d}.tar"
        self._writer = ShardWriter(self.root / SHARD_DIR / name)

    def close_shard(self, provenance: dict[str, Any] | None = None) -> None:
        """Finish the open shard, if any, attaching per-shard provenance."""
        if self._writer is not None:
            info = self._writer.close()
            info.provenance = provenance or {}
            self.shards.append(info)
            self._writer = None

    def add_existing_shard(self, info: dict[str, Any], data: bytes, rows: list[dict[str, Any]]) -> None:
        """Add a finished shard (its card entry, tar bytes and manifest rows) written elsewhere."""
        self.close_shard()
        if sha256_bytes(data) != info["sha256"]:
            raise DatasetError(f"shard {info['name']}: bytes differ from the sha256 of its card entry")
        atomic_write_bytes(self.root / SHARD_DIR / info["name"], data)
        self.shards.append(ShardInfo(**info))
        self.rows.extend(rows)

    def finish(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Write manifest.parquet, then dataset.json (last); return the card."""
        self.close_shard()
        write_manifest(self.root / MANIFEST, self.rows)
        card = {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "modalities": self.modalities,
            "num_samples": len(self.rows),
            "manifest_sha256": sha256_file(self.root / MANIFEST),
            "shards": [s.__dict__ for s in self.shards],
            **meta,
        }
        atomic_write_json(self.root / DATASET_CARD, card)
        return card


def write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
    pq.write_table(table, path, compression="zstd")


def read_manifest_rows(path: Path) -> list[dict[str, Any]]:
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowInvalid) as err:
        raise DatasetError(f"{path}: cannot read manifest: {err}") from err


class Source(Protocol):
    """Where a dataset's files live: a local directory or an S3 prefix."""

    def read(self, relpath: str) -> bytes: ...

    def describe(self, relpath: str) -> str: ...


class LocalSource:
    def __init__(self, root: Path | str):
        self.root = Path(root)

    def read(self, relpath: str) -> bytes:
        path = self.root / relpath
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise DatasetError(f"{path}: missing") from None

    def describe(self, relpath: str) -> str:
        return str(self.root / relpath)


@dataclass(frozen=True)
class ShardRecord:
    """One sample read from a shard: its id and raw bytes per modality."""

    id: str
    shard: str
    members: dict[str, bytes]


def iter_shard_bytes(data: bytes, shard_name: str) -> Iterator[ShardRecord]:
    """Group a tar's members by sample id, in order. Truncation raises ``DatasetError``."""
    current: str | None = None
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                sample_id, modality = parse_member_name(info.name)
                if current is not None and sample_id != current:
                    yield ShardRecord(current, shard_name, members)
                    members = {}
                current = sample_id
                f = tar.extractfile(info)
                payload = f.read() if f is not None else b""
                if len(payload) != info.size:
                    raise DatasetError(f"{shard_name}: member {info.name} is truncated")
                members[modality] = payload
            # tarfile stops quietly at a truncated header; a whole tar ends in zero blocks.
            if data[tar.offset : tar.offset + 1024].strip(b"\0") or len(data) < tar.offset + 1024:
                raise DatasetError(f"{shard_name}: truncated after sample {current!r}")
    except tarfile.TarError as err:
        raise DatasetError(f"{shard_name}: unreadable tar after sample {current!r}: {err}") from err
    if current is not None:
        yield ShardRecord(current, shard_name, members)


class Dataset:
    """A dataset read through a ``Source``: card, manifest and shard records."""

    def __init__(self, source: Source):
        self.source = source
        try:
            self.card: dict[str, Any] = json.loads(source.read(DATASET_CARD))
        except DatasetError:
            raise DatasetError(
                f"{source.describe(DATASET_CARD)}: missing; the dataset was never finished "
                "(dataset.json is written last)"
            ) from None
        self._rows: list[dict[str, Any]] | None = None

    @staticmethod
    def open(location: Path | str) -> Dataset:
        """Open a local directory or an ``s3://bucket/prefix`` published set."""
        if str(location).startswith("s3://"):
            from fourm.storage.dataset_source import S3Source

            return Dataset(S3Source.from_uri(str(location)))
        return Dataset(LocalSource(location))

    @property
    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            data = self.source.read(MANIFEST)
            if sha256_bytes(data) != self.card["manifest_sha256"]:
                raise DatasetError(
                    f"{self.source.describe(MANIFEST)}: sha256 differs from dataset.json"
                )
            self._rows = pq.read_table(pa.BufferReader(data)).to_pylist()
        return self._rows

    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.card["shards"]

    def read_shard(self, name: str, verify: bool = True) -> bytes:
        """Bytes of shard ``name``; with ``verify``, a sha256 mismatch raises."""
        data = self.source.read(f"{SHARD_DIR}/{name}")
        if verify:
            expected = next(s["sha256"] for s in self.shards if s["name"] == name)
            actual = sha256_bytes(data)
            if actual != expected:
                raise DatasetError(
                    f"{self.source.describe(SHARD_DIR + '/' + name)}: sha256 {actual[:12]}… "
                    f"differs from dataset.json ({expected[:12]}…)"
                )
        return data

    def iter_records(self, verify: bool = True) -> Iterator[ShardRecord]:
        for shard in self.shards:
            yield from iter_shard_bytes(self.read_shard(shard["name"], verify), shard["name"])
