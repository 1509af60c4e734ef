"""The ``label`` stage: run the selected labelers over the accepted raw samples.

Output is a label dataset whose shards mirror the raw shards one to one (same
names, same sample order, quarantined samples left out), each shard carrying
the provenance of the labelers that produced it.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fourm.data import codecs
from fourm.data.format import Dataset, DatasetError, DatasetWriter, iter_shard_bytes, read_manifest_rows
from fourm.data.parts import part_range
from fourm.io import atomic_output_dir, sha256_file
from fourm.labelers import hf_boxes as _hf_boxes  # noqa: F401  (registers "hf-boxes")
from fourm.labelers import hf_caption as _hf_caption  # noqa: F401  (registers "hf-caption")
from fourm.labelers import hf_depth as _hf_depth  # noqa: F401  (registers "hf-depth", "hf-normal")
from fourm.labelers import hf_semseg as _hf_semseg  # noqa: F401  (registers "hf-semseg")
from fourm.labelers import oracle as _oracle  # noqa: F401  (registers "oracle")
from fourm.labelers.base import Labeler, LabelerError, RawSample, available_labelers, make_labeler
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
    for name in params.options:
        if name not in available_labelers():
            raise LabelerError(
                f"params.yaml: label.options.{name}: no labeler is called {name!r}; "
                f"available: {', '.join(available_labelers())}"
            )
    for modality, name in params.labelers.items():
        if name not in chosen:
            chosen[name] = (make_labeler(name, params.options.get(name)), [])
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


def label_parts_dir(out_dir: Path) -> Path:
    """Where ``--part`` runs leave their label shards for the assembling run: beside ``out_dir``,
    so on the volume the pods share with the caller."""
    return Path(out_dir).parent / f".{Path(out_dir).name}.parts"


def _card_meta(
    params: LabelParams, raw: Dataset, raw_dir: Path, accepted_manifest: Path, provenance: dict
) -> dict:
    return {
        "name": f"{raw.card.get('name', 'dataset')}-labels",
        "resolution": raw.card.get("resolution"),
        "source": {
            "path": str(raw_dir),
            "dataset_sha256": sha256_file(Path(raw_dir) / "dataset.json"),
            "accepted_manifest_sha256": sha256_file(accepted_manifest),
        },
        "labelers": provenance,
        # batch size and where it ran change speed, never bytes: keep them out of the card
        "params": _card_params(params),
    }


# labeler options that change where and how fast a labeler runs, not what it writes
_RUN_OPTIONS = ("device", "batch_size")


def _card_params(params: LabelParams) -> dict:
    dumped = params.model_dump(mode="json", exclude={"batch_size", "launcher", "parts", "kubernetes"})
    options = {
        name: {k: v for k, v in opts.items() if k not in _RUN_OPTIONS}
        for name, opts in dumped.pop("options").items()
    }
    if options:  # no options: the card stays as it was before labelers took any
        dumped["options"] = options
    return dumped


def _same_labels(a: dict, b: dict) -> bool:
    """Two label cards made from the same inputs by the same labelers (paths may differ)."""
    fields = ("labelers", "params", "resolution")
    sources = ("dataset_sha256", "accepted_manifest_sha256")
    return all(a.get(f) == b.get(f) for f in fields) and all(
        a["source"].get(k) == b["source"].get(k) for k in sources
    )


def labeled_parts(out_dir: Path, meta: dict) -> dict[str, tuple[dict, bytes, list[dict]]]:
    """Shards finished by ``--part`` runs for these inputs and labelers: name -> (entry, bytes, rows)."""
    found: dict[str, tuple[dict, bytes, list[dict]]] = {}
    for part in sorted(label_parts_dir(out_dir).glob("part-*")):
        if not (part / "dataset.json").exists():
            continue  # unfinished part (its writer died): those shards are labeled again
        labels = Dataset.open(part)
        if not _same_labels(labels.card, meta):
            continue
        for entry in labels.shards:
            rows = [r for r in labels.rows if r["shard"] == entry["name"]]
            found[entry["name"]] = (entry, labels.read_shard(entry["name"]), rows)
    return found


def run_label(
    params: LabelParams,
    raw_dir: Path,
    accepted_manifest: Path,
    out_dir: Path,
    part: tuple[int, int] | None = None,
) -> LabelReport:
    """Label every accepted sample of the raw dataset at ``raw_dir`` into ``out_dir``.

    With ``part`` = (index, count): only that range of raw shards, into the parts directory
    beside ``out_dir``; a later full run takes those shards instead of labeling them again."""
    start = time.perf_counter()
    raw = Dataset.open(raw_dir)
    accepted = {r["id"]: r for r in read_manifest_rows(accepted_manifest)}
    labelers = _labelers_for(params)
    modalities = [m for m in LABEL_MODALITIES if m in params.labelers]
    provenance = {m: labelers[name][0].provenance() for m, name in sorted(params.labelers.items())}
    meta = _card_meta(params, raw, raw_dir, accepted_manifest, provenance)
    shards = [s["name"] for s in raw.shards]
    dest = Path(out_dir)
    if part is not None:
        shards = part_range(shards, *part)
        dest = label_parts_dir(out_dir) / f"part-{part[0]}-of-{part[1]}"
    done = labeled_parts(out_dir, meta) if part is None else {}
    with atomic_output_dir(dest) as scratch:
        writer = DatasetWriter(scratch, "labels", modalities, samples_per_shard=1 << 62)
        for name in track(shards, len(shards), "label shards", unit="shards"):
            if name in done:
                writer.add_existing_shard(*done[name])
            else:
                _label_shard(params, labelers, raw, raw_dir, name, accepted, writer, provenance)
        card = writer.finish(meta)
    if part is None and done:
        shutil.rmtree(label_parts_dir(out_dir), ignore_errors=True)  # handed over
    seconds = time.perf_counter() - start
    return LabelReport(
        path=str(dest),
        num_samples=card["num_samples"],
        num_shards=len(card["shards"]),
        labelers=provenance,
        bytes=sum(s["size"] for s in card["shards"]),
        seconds=round(seconds, 3),
        samples_per_second=round(card["num_samples"] / max(seconds, 1e-9), 1),
    )


def _label_shard(
    params: LabelParams,
    labelers: dict[str, tuple[Labeler, list[str]]],
    raw: Dataset,
    raw_dir: Path,
    shard: str,
    accepted: dict[str, dict],
    writer: DatasetWriter,
    provenance: dict,
) -> None:
    """Label the accepted samples of one raw shard into a label shard of the same name (none
    when no sample of it was accepted)."""
    batch: list[RawSample] = []

    def flush() -> None:
        for sample, enc in zip(batch, _label_batch(labelers, batch), strict=True):
            writer.add(sample.id, accepted[sample.id]["split"], enc)
        batch.clear()

    started = False
    for rec in iter_shard_bytes(raw.read_shard(shard), shard):
        if rec.id not in accepted:
            continue
        if not started:
            writer.start_shard(shard)
            started = True
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
    if started:
        writer.close_shard(provenance)
