"""The ``label`` stage: run the selected labelers over the accepted raw samples.

Output is a label dataset whose shards mirror the raw shards one to one (same
names, same sample order, quarantined samples left out), each shard carrying
the provenance of the labelers that produced it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fourm.data import codecs
from fourm.data.format import Dataset, DatasetError, DatasetWriter, read_manifest_rows
from fourm.io import atomic_output_dir, sha256_file
from fourm.labelers import oracle as _oracle  # noqa: F401  (registers "oracle")
from fourm.labelers.base import Labeler, RawSample, make_labeler
from fourm.params import LabelParams
from fourm.progress import track

LABEL_MODALITIES = ("depth", "normal", "semseg", "instance", "boxes")


@dataclass(frozen=True)
class LabelReport:
    path: str
    num_samples: int
    num_shards: int
    labelers: dict[str, dict[str, Any]]
    bytes: int
    seconds: float
    samples_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def _labelers_for(params: LabelParams) -> dict[str, tuple[Labeler, list[str]]]:
    """Instantiate each selected labeler once, with the modalities it is asked for."""
    chosen: dict[str, tuple[Labeler, list[str]]] = {}
    for modality, name in params.labelers.items():
        if name not in chosen:
            chosen[name] = (make_labeler(name), [])
        labeler, modalities = chosen[name]
        if modality not in labeler.produces:
            raise ValueError(
                f"params.yaml: label.labelers.{modality}: labeler {name!r} does not produce "
                f"{modality} (it produces {', '.join(labeler.produces)})"
            )
        modalities.append(modality)
    return chosen


def _label_batch(
    labelers: dict[str, tuple[Labeler, list[str]]], batch: list[RawSample]
) -> list[dict[str, bytes]]:
    encoded: list[dict[str, bytes]] = [{} for _ in batch]
    for labeler, modalities in labelers.values():
        outputs = labeler(batch)
        for enc, out in zip(encoded, outputs, strict=True):
            for m in modalities:
                enc[m] = codecs.encode(m, out[m])
    return encoded


def run_label(params: LabelParams, raw_dir: Path, accepted_manifest: Path, out_dir: Path) -> LabelReport:
    """Label every accepted sample of the raw dataset at ``raw_dir`` into ``out_dir``."""
    start = time.perf_counter()
    raw = Dataset.open(raw_dir)
    accepted = {r["id"]: r for r in read_manifest_rows(accepted_manifest)}
    labelers = _labelers_for(params)
    modalities = [m for m in LABEL_MODALITIES if m in params.labelers]
    provenance = {m: labelers[name][0].provenance() for m, name in sorted(params.labelers.items())}
    records = (rec for rec in raw.iter_records() if rec.id in accepted)
    with atomic_output_dir(out_dir) as scratch:
        writer = DatasetWriter(scratch, "labels", modalities, samples_per_shard=1 << 62)
        shard: str | None = None
        batch: list[RawSample] = []

        def flush() -> None:
            for sample, enc in zip(batch, _label_batch(labelers, batch), strict=True):
                writer.add(sample.id, accepted[sample.id]["split"], enc)
            batch.clear()

        for rec in track(records, len(accepted), "label samples"):
            if rec.shard != shard:
                flush()
                if shard is not None:
                    writer.close_shard(provenance)
                writer.start_shard(rec.shard)
                shard = rec.shard
            try:
                sample = RawSample(
                    id=rec.id,
                    rgb=codecs.decode("rgb", rec.members["rgb"]),
                    caption=codecs.decode("caption", rec.members["caption"]),
                    scene=codecs.decode("scene", rec.members["scene"]) if "scene" in rec.members else None,
                )
            except (KeyError, codecs.DecodeError) as err:
                raise DatasetError(f"{raw_dir}: shard {rec.shard}, sample {rec.id}: {err}") from err
            batch.append(sample)
            if len(batch) >= params.batch_size:
                flush()
        flush()
        writer.close_shard(provenance)
        card = writer.finish(
            {
                "name": f"{raw.card.get('name', 'dataset')}-labels",
                "resolution": raw.card.get("resolution"),
                "source": {
                    "path": str(raw_dir),
                    "dataset_sha256": sha256_file(Path(raw_dir) / "dataset.json"),
                    "accepted_manifest_sha256": sha256_file(accepted_manifest),
                },
                "labelers": provenance,
                # batch_size changes speed, never bytes: keep it out of the card
                "params": params.model_dump(mode="json", exclude={"batch_size"}),
            }
        )
    seconds = time.perf_counter() - start
    return LabelReport(
        path=str(out_dir),
        num_samples=card["num_samples"],
        num_shards=len(card["shards"]),
        labelers=provenance,
        bytes=sum(s["size"] for s in card["shards"]),
        seconds=round(seconds, 3),
        samples_per_second=round(card["num_samples"] / max(seconds, 1e-9), 1),
    )
