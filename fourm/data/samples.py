"""Read whole samples: a raw dataset joined with its label set, accepted samples only.

Raw shards hold rgb, caption and scene; label shards (same names, same order,
quarantined samples left out) hold depth, normal, semseg, instance and boxes, and
optionally edges, clip and a caption (from a captioner; it wins over the raw one).
``iter_samples`` walks both in step and yields the decoded members asked for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fourm.data import codecs
from fourm.data.format import Dataset, DatasetError, read_manifest_rows

RAW_MEMBERS = ("rgb", "caption", "scene")


@dataclass(frozen=True)
class DatasetInputs:
    """Where the accepted labeled samples are: raw set, label set, accepted-labels manifest."""

    raw: Path
    labels: Path
    accepted: Path

    @property
    def resolution(self) -> int:
        return int(Dataset.open(self.raw).card["resolution"])


@dataclass(frozen=True)
class Sample:
    id: str
    split: str
    shard: str
    values: dict[str, Any]


def iter_samples(
    raw_dir: Path | str,
    labels_dir: Path | str,
    accepted_manifest: Path | str,
    members: Sequence[str],
    splits: Sequence[str] | None = None,
    shards: Sequence[str] | None = None,
) -> Iterator[Sample]:
    """Accepted samples (optionally of ``splits`` and source ``shards``) with the decoded ``members``."""
    accepted = {r["id"]: r["split"] for r in read_manifest_rows(Path(accepted_manifest))}
    labels = (
        Dataset.open(labels_dir) if any(m not in RAW_MEMBERS or m == "caption" for m in members) else None
    )
    labeled = set(labels.card.get("modalities", [])) if labels is not None else set()
    # a caption in the label set (a captioner filled it) wins over the source's
    label_members = [m for m in members if m not in RAW_MEMBERS or m in labeled]
    raw_members = [m for m in members if m not in label_members]
    raw = Dataset.open(raw_dir) if raw_members else None
    labels = labels if label_members else None
    lead = labels or raw
    assert lead is not None, "no members asked for"
    for shard in lead.shards:
        name = shard["name"]
        if shards is not None and name not in shards:
            continue
        label_recs = _records(labels, name) if labels else None
        raw_recs = _records(raw, name) if raw else None
        for rec in label_recs if label_recs is not None else raw_recs:
            split = accepted.get(rec.id)
            if split is None or (splits is not None and split not in splits):
                if raw_recs is not None and label_recs is not None:
                    _advance_to(raw_recs, rec.id, raw_dir, name)
                continue
            values: dict[str, Any] = {}
            sources = [(rec, label_members, labels_dir)]
            if raw_recs is not None:
                raw_rec = rec if label_recs is None else _advance_to(raw_recs, rec.id, raw_dir, name)
                sources.append((raw_rec, raw_members, raw_dir))
            for source_rec, wanted, where in sources:
                for member in wanted:
                    try:
                        values[member] = codecs.decode(member, source_rec.members[member])
                    except KeyError:
                        raise DatasetError(
                            f"{where}: shard {name}, sample {rec.id}: no {member!r} member"
                        ) from None
                    except codecs.DecodeError as err:
                        raise DatasetError(f"{where}: shard {name}, sample {rec.id}: {err}") from None
            yield Sample(rec.id, split, name, values)


def _records(dataset: Dataset, shard: str) -> Iterator[Any]:
    from fourm.data.format import iter_shard_bytes

    return iter_shard_bytes(dataset.read_shard(shard), shard)


def _advance_to(records: Iterator[Any], sample_id: str, where: Path | str, shard: str) -> Any:
    """Skip raw records (quarantined by labeling) up to ``sample_id``."""
    for rec in records:
        if rec.id == sample_id:
            return rec
    raise DatasetError(f"{where}: shard {shard}: sample {sample_id} of the label set is missing")


def load_arrays(
    raw_dir: Path | str,
    labels_dir: Path | str,
    accepted_manifest: Path | str,
    member: str,
    split: str,
    limit: int | None = None,
) -> tuple[list[str], np.ndarray]:
    """Ids and the stacked values of one image-like member over one split (held in memory)."""
    ids, values = [], []
    for sample in iter_samples(raw_dir, labels_dir, accepted_manifest, [member], [split]):
        ids.append(sample.id)
        values.append(sample.values[member])
        if limit is not None and len(ids) >= limit:
            break
    if not values:
        raise DatasetError(f"{labels_dir}: no accepted samples in split {split!r}")
    return ids, np.stack(values)
