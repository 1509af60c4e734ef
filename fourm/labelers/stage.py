"""The ``label`` stage: run the selected labelers over the accepted raw samples.

Output is a label dataset whose shards mirror the raw shards one to one (same
names, same sample order, quarantined samples left out), each shard carrying
the provenance of the labelers that produced it.

Shards are labeled here (``label.workers`` spawned processes, each building its
labelers once) or by ``--part`` runs. Every finished shard is kept at once in a
``ShardStore`` beside the output, so a rerun after a crash or Ctrl-C labels only
the shards not finished for the same inputs and labelers; the full run then
assembles the label set from the store, in raw-shard order, and removes it.
"""

from __future__ import annotations

import multiprocessing
import shutil
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fourm.data import codecs
from fourm.data.format import (
    SHARD_DIR,
    Dataset,
    DatasetError,
    DatasetWriter,
    iter_shard_bytes,
    read_manifest_rows,
)
from fourm.data.parts import part_range
from fourm.io import atomic_output_dir, sha256_file
from fourm.labelers import edges as _edges  # noqa: F401  (registers "canny")
from fourm.labelers import hf_boxes as _hf_boxes  # noqa: F401  (registers "hf-boxes")
from fourm.labelers import hf_caption as _hf_caption  # noqa: F401  (registers "hf-caption")
from fourm.labelers import hf_clip as _hf_clip  # noqa: F401  (registers "hf-clip")
from fourm.labelers import hf_depth as _hf_depth  # noqa: F401  (registers "hf-depth", "hf-normal")
from fourm.labelers import hf_semseg as _hf_semseg  # noqa: F401  (registers "hf-semseg")
from fourm.labelers import oracle as _oracle  # noqa: F401  (registers "oracle")
from fourm.labelers.base import Labeler, LabelerError, RawSample, available_labelers, make_labeler
from fourm.labelers.shard_store import FinishedShard, ShardStore, label_parts_dir
from fourm.params import LabelParams
from fourm.progress import StepProgress

LABEL_MODALITIES = ("depth", "normal", "semseg", "instance", "boxes", "edges", "clip", "caption")


@dataclass(frozen=True)
class LabelReport:
    path: str
    num_samples: int
    num_shards: int
    labelers: dict[str, dict[str, Any]]
    bytes: int
    seconds: float
    samples_per_second: float
    workers: int = 1

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


def _provenance(params: LabelParams, labelers: dict[str, tuple[Labeler, list[str]]]) -> dict:
    return {m: labelers[name][0].provenance() for m, name in sorted(params.labelers.items())}


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
    dumped = params.model_dump(
        mode="json", exclude={"batch_size", "workers", "launcher", "parts", "kubernetes"}
    )
    options = {
        name: {k: v for k, v in opts.items() if k not in _RUN_OPTIONS}
        for name, opts in dumped.pop("options").items()
    }
    if options:  # no options: the card stays as it was before labelers took any
        dumped["options"] = options
    return dumped


def label_identity(meta: dict) -> dict:
    """What decides the label shards' bytes: the inputs' hashes, the labelers' provenance and
    the label params of the card (not paths, not where or how fast it ran)."""
    sources = ("dataset_sha256", "accepted_manifest_sha256")
    return {
        "labelers": meta["labelers"],
        "params": meta["params"],
        "resolution": meta["resolution"],
        "source": {k: meta["source"][k] for k in sources},
    }


class _ShardLabeler:
    """Labels raw shards into a ``ShardStore``; one per process, so its labelers load once."""

    def __init__(
        self,
        params: LabelParams,
        raw: Dataset,
        raw_dir: Path,
        accepted: dict[str, dict],
        labelers: dict[str, tuple[Labeler, list[str]]],
        provenance: dict,
        store: ShardStore,
    ):
        self.params, self.raw, self.raw_dir, self.accepted = params, raw, Path(raw_dir), accepted
        self.labelers, self.provenance, self.store = labelers, provenance, store
        self.modalities = [m for m in LABEL_MODALITIES if m in params.labelers]

    def label(self, shard: str) -> FinishedShard:
        """Label raw shard ``shard`` into the store (no label shard when none of it was accepted)."""
        with self.store.scratch() as tmp:
            writer = DatasetWriter(tmp, "labels", self.modalities, samples_per_shard=1 << 62)
            self._label_into(shard, writer)
            if not writer.shards:
                return self.store.put(shard, None, None, [])
            return self.store.put(
                shard, tmp / SHARD_DIR / shard, dict(writer.shards[0].__dict__), writer.rows
            )

    def _label_into(self, shard: str, writer: DatasetWriter) -> None:
        batch: list[RawSample] = []

        def flush() -> None:
            for sample, enc in zip(batch, _label_batch(self.labelers, batch), strict=True):
                writer.add(sample.id, self.accepted[sample.id]["split"], enc)
            batch.clear()

        started = False
        for rec in iter_shard_bytes(self.raw.read_shard(shard), shard):
            if rec.id not in self.accepted:
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
                raise DatasetError(f"{self.raw_dir}: shard {rec.shard}, sample {rec.id}: {err}") from err
            batch.append(sample)
            if len(batch) >= self.params.batch_size:
                flush()
        if batch:
            flush()
        if started:
            writer.close_shard(self.provenance)


class _Progress:
    """Images labeled (with images/s) and shards finished, on one bar."""

    def __init__(self, total_images: int, reused_images: int, shards: int, reused_shards: int):
        self.images, self.shards, self.num_shards = reused_images, reused_shards, shards
        self.bar = StepProgress(total_images, "label", unit="images", start=reused_images)

    def add(self, images: int, shards: int = 0) -> None:
        self.images += images
        self.shards += shards
        self.bar.update(self.images, f"{self.shards}/{self.num_shards} shards")


# one per worker process: built by the pool's initializer, used by every shard it labels
_WORKER: _ShardLabeler | BaseException | None = None


def _start_worker(
    params: LabelParams,
    raw_dir: Path,
    accepted_manifest: Path,
    store: ShardStore,
    provenance: dict,
    threads: int | None,
) -> None:
    global _WORKER
    try:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        labelers = _labelers_for(params)
        if _provenance(params, labelers) != provenance:
            raise LabelerError(
                "label: a worker's labelers differ from the run's (weights changed meanwhile?)"
            )
        accepted = {r["id"]: r for r in read_manifest_rows(accepted_manifest)}
        _WORKER = _ShardLabeler(params, Dataset.open(raw_dir), raw_dir, accepted, labelers, provenance, store)
    except Exception as err:  # raised with the first shard: a failing initializer only says "broken pool"
        _WORKER = err


def _worker_label(shard: str) -> FinishedShard:
    if not isinstance(_WORKER, _ShardLabeler):
        raise _WORKER or RuntimeError("label worker was not started")
    return _WORKER.label(shard)


def _label_in_processes(
    params: LabelParams,
    raw_dir: Path,
    accepted_manifest: Path,
    store: ShardStore,
    provenance: dict,
    todo: list[str],
    progress: _Progress,
) -> dict[str, FinishedShard]:
    workers = min(params.workers, len(todo))
    # workers use this process's torch thread count: model outputs (hf-depth's convolutions) change
    # in the last bits with it, and the labels must not depend on how many workers ran
    threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(params, Path(raw_dir), Path(accepted_manifest), store, provenance, threads),
    )
    done: dict[str, FinishedShard] = {}
    try:
        futures = [pool.submit(_worker_label, name) for name in todo]
        for future in as_completed(futures):
            shard = future.result()
            done[shard.name] = shard
            progress.add(shard.num_samples, shards=1)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # shards being labeled still finish into the store
        raise
    pool.shutdown()
    return done


def run_label(
    params: LabelParams,
    raw_dir: Path,
    accepted_manifest: Path,
    out_dir: Path,
    part: tuple[int, int] | None = None,
) -> LabelReport:
    """Label every accepted sample of the raw dataset at ``raw_dir`` into ``out_dir``.

    Shards already finished for the same inputs and labelers (by ``--part`` runs or an
    interrupted run) are taken from the store beside ``out_dir``, not labeled again. With
    ``part`` = (index, count): only that range of raw shards, into the store; a later full
    run assembles the label set."""
    start = time.perf_counter()
    raw = Dataset.open(raw_dir)
    accepted = {r["id"]: r for r in read_manifest_rows(accepted_manifest)}
    labelers = _labelers_for(params)
    provenance = _provenance(params, labelers)
    meta = _card_meta(params, raw, raw_dir, accepted_manifest, provenance)
    store = ShardStore(out_dir, label_identity(meta))
    shards = [s["name"] for s in raw.shards]
    if part is not None:
        shards = part_range(shards, *part)
    wanted = set(shards)
    finished = {name: s for name, s in store.finished().items() if name in wanted}
    todo = [name for name in shards if name not in finished]
    per_shard = Counter(r.get("shard") for r in accepted.values())
    progress = _Progress(
        sum(per_shard[name] for name in shards),
        sum(s.num_samples for s in finished.values()),
        len(shards),
        len(finished),
    )
    try:
        if params.workers > 1 and len(todo) > 1:
            del labelers  # each worker builds its own: free this process's copy (models) first
            finished.update(
                _label_in_processes(params, raw_dir, accepted_manifest, store, provenance, todo, progress)
            )
        else:
            here = _ShardLabeler(params, raw, raw_dir, accepted, labelers, provenance, store)
            for name in todo:
                finished[name] = here.label(name)
                progress.add(finished[name].num_samples, shards=1)
    finally:
        progress.bar.close()
    labeled = [finished[name] for name in shards if finished[name].entry is not None]
    if part is None:
        with atomic_output_dir(out_dir) as scratch:
            modalities = [m for m in LABEL_MODALITIES if m in params.labelers]
            writer = DatasetWriter(scratch, "labels", modalities, samples_per_shard=1 << 62)
            for shard in labeled:
                writer.add_existing_shard(shard.entry, store.read(shard), shard.rows)
            writer.finish(meta)
        shutil.rmtree(label_parts_dir(out_dir), ignore_errors=True)  # handed over
    seconds = time.perf_counter() - start
    num_samples = sum(s.num_samples for s in labeled)
    return LabelReport(
        path=str(out_dir if part is None else store.root),
        num_samples=num_samples,
        num_shards=len(labeled),
        labelers=provenance,
        bytes=sum(s.entry["size"] for s in labeled),
        seconds=round(seconds, 3),
        samples_per_second=round(num_samples / max(seconds, 1e-9), 1),
        workers=params.workers,
    )
