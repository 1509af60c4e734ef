"""The ``generate`` stage: render the synthetic dataset into raw shards.

The raw dataset is what a camera would give: RGB, a caption and (because the
source is synthetic) the scene description. Labels come later, from the label
stage, so synthetic and real images flow through the same pipeline.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from fourm.data import codecs
from fourm.data.format import DatasetWriter
from fourm.data.synthetic import make_sample, split_of
from fourm.io import atomic_output_dir
from fourm.params import GenerateParams
from fourm.progress import track

RAW_MODALITIES = ("rgb", "caption", "scene")


@dataclass(frozen=True)
class GenerateReport:
    path: str
    num_samples: int
    splits: dict[str, int]
    num_shards: int
    bytes: int
    seconds: float
    scenes_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def _render_encoded(args: tuple[GenerateParams, int]) -> tuple[str, str, dict[str, bytes], str]:
    params, index = args
    split = split_of(index, params.num_scenes, params.splits.model_dump())
    s = make_sample(
        params.seed, index, params.resolution, params.min_objects, params.max_objects, split
    )
    encoded = {
        "rgb": codecs.encode("rgb", s.rendered.rgb),
        "caption": codecs.encode("caption", s.caption),
        "scene": codecs.encode("scene", s.scene.to_dict()),
    }
    return s.id, split, encoded, s.caption


def run_generate(params: GenerateParams, out_dir: Path) -> GenerateReport:
    """Render ``params.num_scenes`` scenes into a raw dataset at ``out_dir`` (atomically)."""
    start = time.perf_counter()
    jobs = ((params, i) for i in range(params.num_scenes))
    with atomic_output_dir(out_dir) as scratch:
        writer = DatasetWriter(scratch, "raw", RAW_MODALITIES, params.samples_per_shard)
        # spawn, not fork: stages also run inside threaded hosts (Prefect workers).
        pool_cm = mp.get_context("spawn").Pool(params.workers) if params.workers > 1 else _Inline()
        with pool_cm as pool:
            results = pool.imap(_render_encoded, jobs, chunksize=32)
            for sample_id, split, encoded, text in track(
                results, params.num_scenes, "render scenes", "scenes"
            ):
                writer.add(sample_id, split, encoded, {"caption": text})
        card = writer.finish(
            {
                "name": f"synthetic-seed{params.seed}",
                "source": "fourm.data.synthetic",
                "resolution": params.resolution,
                # workers changes speed, never bytes: keep it out of the card
                "params": params.model_dump(mode="json", exclude={"workers"}),
            }
        )
        size = sum(s["size"] for s in card["shards"])
    seconds = time.perf_counter() - start
    return GenerateReport(
        path=str(out_dir),
        num_samples=card["num_samples"],
        splits=dict(sorted(Counter(r["split"] for r in writer.rows).items())),
        num_shards=len(card["shards"]),
        bytes=size,
        seconds=round(seconds, 3),
        scenes_per_second=round(params.num_scenes / seconds, 1),
    )


class _Inline:
    """A stand-in for a process pool that maps in this process (workers=1)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap(fn, items, chunksize: int = 1):  # noqa: ANN001 - mirrors Pool.imap
        return map(fn, items)
