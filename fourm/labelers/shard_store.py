"""Finished label shards, kept beside the output until a run assembles the label set.

Each label shard is stored here the moment it is finished, by whichever process
labeled it (a ``--part`` pod, a local worker, a run that is later interrupted),
under a directory named by the run's *identity*: the inputs' hashes, the
labelers' provenance and the label params that change bytes. A later run with
the same identity takes these shards instead of labeling them again; a run with
another identity never sees them. The tar is moved in first and its record
(``NAME.json``: card entry and manifest rows) written last, atomically, so a
shard without a record was never finished and is labeled again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fourm.io import atomic_write_bytes, canonical_json, sha256_file


def label_parts_dir(out_dir: Path | str) -> Path:
    """Where finished shards wait for the assembling run: beside ``out_dir``, so on the volume
    that ``--part`` pods share with the caller."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.parts"


@dataclass(frozen=True)
class FinishedShard:
    """One raw shard's labels: its card entry and manifest rows (``entry`` is None when no
    sample of the raw shard was accepted, so there is no label shard)."""

    name: str
    entry: dict[str, Any] | None
    rows: list[dict[str, Any]]

    @property
    def num_samples(self) -> int:
        return len(self.rows)


class ShardStore:
    """The finished shards of one identity, under ``label_parts_dir(out_dir)/<identity hash>``."""

    def __init__(self, out_dir: Path | str, identity: dict[str, Any]):
        self.identity = json.loads(canonical_json(identity))  # as a record stores it (lists, not tuples)
        key = hashlib.sha256(canonical_json(self.identity)).hexdigest()[:16]
        self.root = label_parts_dir(out_dir) / key

    def finished(self) -> dict[str, FinishedShard]:
        """Shards finished for this identity whose tar is whole: name -> shard."""
        found: dict[str, FinishedShard] = {}
        for path in sorted(self.root.glob("*.json")) if self.root.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if record.get("identity") != self.identity:
                continue
            entry = record["entry"]
            tar = self.root / record["name"]
            if entry is not None and (not tar.is_file() or sha256_file(tar) != entry["sha256"]):
                continue  # overwritten or damaged since: label it again
            found[record["name"]] = FinishedShard(record["name"], entry, record["rows"])
        return found

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A temporary directory inside the store (same filesystem, so ``put`` only renames)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".tmp-", dir=self.root) as tmp:
            yield Path(tmp)

    def put(
        self, name: str, tar: Path | None, entry: dict[str, Any] | None, rows: list[dict[str, Any]]
    ) -> FinishedShard:
        """Keep shard ``name`` (its tar at ``tar``, moved here) as finished."""
        if tar is not None:
            os.replace(tar, self.root / name)
        record = {"identity": self.identity, "name": name, "entry": entry, "rows": rows}
        # not sorted: the manifest's columns follow the rows' key order
        atomic_write_bytes(self.root / f"{name}.json", json.dumps(record).encode())
        return FinishedShard(name, entry, rows)

    def read(self, shard: FinishedShard) -> bytes:
        return (self.root / shard.name).read_bytes()
