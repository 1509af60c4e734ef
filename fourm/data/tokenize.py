"""The ``tokenize`` stage: every accepted sample, every modality, through its tokenizer.

Output is a token set (``fourm/data/token_shards.py``): one token shard per
(source shard, split), each recording the source shards' sha256 and the
fingerprint of every tokenizer that produced it. With a publish URI the set is
also uploaded to S3, shard by shard as it is made, its manifest last.

Resumable: before encoding a source shard, the stage looks for that shard's
token shards already in S3 (a ``_partial/<name>.json`` record written after
its files) with the same provenance; if found, the files are fetched and
verified instead of recomputed.

Shard-parallel: with ``part=(i, n)`` a run encodes only the i-th of n contiguous ranges
of source shards and publishes them as partial shards, writing no token set; n such
runs (an Indexed Job on Kubernetes, one index per range) followed by one ordinary run
that reuses every shard give the same token set as one run alone.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fourm.data.format import Dataset, read_manifest_rows
from fourm.data.parts import part_range
from fourm.data.samples import DatasetInputs, iter_samples
from fourm.data.token_set import publish_token_set
from fourm.data.token_shards import ModalitySpec, TokenSetWriter
from fourm.io import atomic_output_dir, canonical_json, sha256_file
from fourm.modalities import get_modality
from fourm.params import TokenizeParams
from fourm.progress import track
from fourm.storage.object_store import ObjectStore, StorageError, split_s3_uri
from fourm.tokenizers.load import load_tokenizer, tokenizer_fingerprint

PARTIAL = "_partial"


@dataclass
class TokenizeReport:
    path: str
    num_samples: int
    num_shards: int
    splits: dict[str, int]
    modalities: dict[str, dict[str, Any]]
    truncated: dict[str, int]
    encoded_shards: int
    reused_shards: int
    published: str | None
    bytes: int
    seconds: float
    samples_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Remote:
    """Where shards are published as they are made, and looked up for a resume."""

    def __init__(self, store: ObjectStore, uri: str):
        self.store = store
        self.bucket, self.prefix = split_s3_uri(uri)
        self.uri = uri
        store.ensure_bucket(self.bucket)

    def _record_key(self, name: str) -> str:
        return f"{self.prefix}/{PARTIAL}/{name}.json"

    def reusable(self, name: str, provenance: dict[str, Any]) -> dict[str, Any] | None:
        """The shard's entry, when S3 holds it with the same provenance."""
        try:
            if not self.store.exists(self.bucket, self._record_key(name)):
                return None
            entry = json.loads(self.store.get_bytes(self.bucket, self._record_key(name)))
        except (StorageError, ValueError):
            return None
        return entry if entry.get("provenance") == provenance else None

    def fetch(self, entry: dict[str, Any], root: Path) -> None:
        for info in entry["files"].values():
            self.store.get_file(self.bucket, f"{self.prefix}/{info['path']}", root / info["path"])

    def upload(self, entry: dict[str, Any], root: Path) -> None:
        for info in entry["files"].values():
            self.store.put_file(self.bucket, f"{self.prefix}/{info['path']}", root / info["path"])
        self.store.put_bytes(self.bucket, self._record_key(entry["name"]), canonical_json(entry))


def _groups(accepted_manifest: Path) -> OrderedDict[str, OrderedDict[str, list[str]]]:
    """source shard -> split -> sample ids, in dataset order."""
    groups: OrderedDict[str, OrderedDict[str, list[str]]] = OrderedDict()
    for row in read_manifest_rows(accepted_manifest):
        groups.setdefault(row["shard"], OrderedDict()).setdefault(row["split"], []).append(row["id"])
    return groups


@contextlib.contextmanager
def _scratch(out_dir: Path, throwaway: bool) -> Iterator[Path]:
    if throwaway:
        with tempfile.TemporaryDirectory(prefix="tokenize-part-") as tmp:
            yield Path(tmp)
    else:
        with atomic_output_dir(out_dir) as scratch:
            yield scratch


def _part_report(
    part: tuple[int, int],
    specs: dict[str, ModalitySpec],
    truncated: dict[str, int],
    encoded: int,
    reused: int,
    total: int,
    seconds: float,
) -> TokenizeReport:
    return TokenizeReport(
        path=f"part {part[0]}/{part[1]}",
        num_samples=total,
        num_shards=encoded + reused,
        splits={},
        modalities={m: s.to_card() for m, s in specs.items()},
        truncated=truncated,
        encoded_shards=encoded,
        reused_shards=reused,
        published=None,
        bytes=0,
        seconds=round(seconds, 3),
        samples_per_second=round(total / max(seconds, 1e-9), 1),
    )


def token_shard_name(source_shard: str, split: str) -> str:
    """``shard-000003.tar`` + ``val`` -> ``val-shard-000003``."""
    return f"{split}-{Path(source_shard).stem}"


def _encode_values(modality: str, tokenizer: Any, values: list[Any]) -> tuple[np.ndarray, int]:
    """Tokens of one modality for a group of samples, and how many were truncated."""
    if hasattr(tokenizer, "encode_with_flags"):
        tokens, truncated = tokenizer.encode_with_flags(values)
        return tokens, int(np.asarray(truncated).sum())
    return tokenizer.encode(np.stack(values)), 0


def run_tokenize(
    params: TokenizeParams,
    inputs: DatasetInputs,
    tokenizers_root: Path,
    out_dir: Path,
    publish_uri: str | None = None,
    store: ObjectStore | None = None,
    part: tuple[int, int] | None = None,
) -> TokenizeReport:
    """Encode every accepted sample into a token set at ``out_dir`` (and publish it to ``publish_uri``).

    With ``part`` = (index, count): only that range of source shards, published as partial
    shards for a later full run to reuse; ``out_dir`` is not written."""
    start = time.perf_counter()
    if part is not None and (publish_uri is None or store is None):
        raise ValueError("a tokenize part publishes its shards to S3: it needs tokenize.publish: true")
    modalities = list(params.modalities)
    tokenizers = {m: load_tokenizer(m, tokenizers_root) for m in modalities}
    fingerprints = {m: tokenizer_fingerprint(m, tokenizers_root) for m in modalities}
    specs = {
        m: ModalitySpec(tokenizers[m].vocab_size, get_modality(m).num_tokens, fingerprints[m])
        for m in modalities
    }
    members = sorted({get_modality(m).source for m in modalities})
    raw_card = Dataset.open(inputs.raw).card
    label_card = Dataset.open(inputs.labels).card
    raw_sha = {s["name"]: s["sha256"] for s in raw_card["shards"]}
    label_sha = {s["name"]: s["sha256"] for s in label_card["shards"]}
    groups = _groups(inputs.accepted)
    if part is not None:
        groups = OrderedDict((name, groups[name]) for name in part_range(list(groups), *part))
    remote = _Remote(store, publish_uri) if publish_uri and store is not None else None
    truncated = {m: 0 for m in modalities}
    encoded = reused = 0
    total = sum(len(ids) for by_split in groups.values() for ids in by_split.values())
    with _scratch(out_dir, part is not None) as scratch:
        writer = TokenSetWriter(scratch, specs)
        for source, by_split in track(groups.items(), len(groups), "tokenize shards", unit="shards"):
            provenance = {
                "source_shard": source,
                "raw_sha256": raw_sha.get(source),
                "labels_sha256": label_sha.get(source),
                "tokenizers": fingerprints,
            }
            names = {split: token_shard_name(source, split) for split in by_split}
            found = {s: remote.reusable(n, provenance) for s, n in names.items()} if remote else {}
            if remote and all(found.values()):
                for entry in found.values():
                    remote.fetch(entry, scratch)
                    writer.add_existing_shard(entry)
                reused += len(found)
                continue
            by_id: dict[str, dict[str, Any]] = {}
            for sample in iter_samples(inputs.raw, inputs.labels, inputs.accepted, members, shards=[source]):
                by_id[sample.id] = sample.values
            for split, ids in by_split.items():
                arrays = {}
                for m in modalities:
                    values = [by_id[i][get_modality(m).source] for i in ids]
                    arrays[m], n_trunc = _encode_values(m, tokenizers[m], values)
                    truncated[m] += n_trunc
                entry = writer.add_shard(names[split], split, ids, arrays, provenance)
                if remote:
                    remote.upload(entry, scratch)
                encoded += 1
        if part is not None:
            return _part_report(part, specs, truncated, encoded, reused, total, time.perf_counter() - start)
        card = writer.finish(
            {
                "name": f"{raw_card.get('name', 'dataset')}-tokens",
                "source": {
                    "raw_dataset_sha256": sha256_file(Path(inputs.raw) / "dataset.json"),
                    "labels_dataset_sha256": sha256_file(Path(inputs.labels) / "dataset.json"),
                    "accepted_manifest_sha256": sha256_file(inputs.accepted),
                },
                "tokenizers": fingerprints,
            }
        )
        size = sum(f["size"] for s in card["shards"] for f in s["files"].values())
    if remote:
        publish_token_set(store, out_dir, publish_uri)
    seconds = time.perf_counter() - start
    return TokenizeReport(
        path=str(out_dir),
        num_samples=card["num_samples"],
        num_shards=len(card["shards"]),
        splits=card["splits"],
        modalities={m: s.to_card() for m, s in specs.items()},
        truncated=truncated,
        encoded_shards=encoded,
        reused_shards=reused,
        published=publish_uri if remote else None,
        bytes=size,
        seconds=round(seconds, 3),
        samples_per_second=round(total / max(seconds, 1e-9), 1),
    )
