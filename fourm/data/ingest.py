"""The ``ingest`` stage: real images (a folder, or webdataset tars) into a raw dataset.

The output is a raw dataset exactly like the one ``generate`` writes, minus the
synthetic ``scene`` member: members ``rgb`` (``resolution`` square, RGB, PNG)
and ``caption`` (text, possibly empty), the same manifest columns and card
fields, so validate -> label -> tokenizers read it the same way. Beside it,
``quarantine.json`` lists every rejected input with the rule it broke.

Sources (``fourm/data/ingest_sources.py``)
    * a local folder of images (``.jpg .jpeg .png .webp``, any depth), walked in
      sorted path order; hidden files and folders (``.DS_Store``, ``._x.jpg``) are
      skipped. Captions: a sidecar ``<stem>.txt`` next to the image.
    * webdataset tars: a ``.tar`` file, a folder of them, a glob, or
      ``s3://bucket/prefix`` (through ``ObjectStore``; such objects must carry
      the sha256 metadata ``ObjectStore`` writes, since every read is verified).
      A sample is the run of consecutive members sharing a key (the member path
      up to the first dot of its file name); image members are ``<key>.jpg`` etc.,
      the caption is ``<key>.txt`` or ``<key>.caption``.
    * ``params.captions``: a CSV (columns ``file,caption``) or JSONL
      (``{"file": ..., "caption": ...}``) mapping. ``file`` is the image's path
      relative to the source folder (posix separators) or, for tars, the image
      member's name. The mapping wins over sidecars and caption members.
      A missing caption is an empty string: the caption rule of ``validate`` decides.

Images
    Decoded with PIL (``verify()`` then a full ``load()``), EXIF orientation
    applied, any mode converted to RGB (alpha composited on white; 16-bit
    grayscale scaled by 1/257), then ``center_crop`` (shorter side to
    ``resolution``, centre crop) or ``pad`` (longer side to ``resolution``,
    centred on ``pad_color``). Large JPEGs are decoded at a reduced DCT scale
    (never below twice the resolution) before resampling. No colour management:
    embedded ICC profiles are ignored.

Ids, duplicates, splits
    ``img-`` + the first 16 hex digits of the sha256 of the source file's bytes,
    so re-ingesting the same files gives the same ids and byte-identical shards.
    Duplicates are detected two ways, both quarantined under the rule
    ``duplicate`` with the reason ``duplicate of <id>`` (the first one kept):
    identical source bytes, and identical pixels after decoding and resizing
    (e.g. one picture saved as PNG and as lossless WebP). Splits come from a hash
    of the id with ``splits`` fractions (not contiguous as in ``generate``: a
    stream does not know its length), so an image keeps its split on re-ingest.

Rejections (``quarantine.json`` entries ``{id, source, member, rules, reason}``;
``id`` is null when the bytes could not be read at all, e.g. a broken tar)
    ``empty_file``, ``not_image`` (PIL does not recognise the bytes),
    ``unreadable`` (truncated or corrupt image, bad EXIF, unconvertible mode, or
    an unreadable file), ``too_small`` (shorter side under ``min_size``),
    ``duplicate``, ``unreadable_tar`` (a source tar breaks off; samples before the
    break are kept). A rejection never stops the run.

Streaming
    Images are read, decoded and written one at a time into shards as they come;
    only per-image bookkeeping stays in memory (the list of source paths for a
    folder, two short hashes per image for duplicates, the manifest rows that
    ``DatasetWriter`` keeps until ``finish``, the quarantine list and the caption
    mapping). A tar is streamed member by member (an S3 tar is fetched whole, one
    at a time). Memory is flat in the image data, however many images there are.

Top-level bad input (source missing, nothing image-like in it, a bad caption
mapping, or every image rejected) raises ``IngestError`` naming the file and the
rule; the output directory is written all or nothing (``atomic_output_dir``).
"""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from fourm.data import codecs
from fourm.data.format import DatasetWriter
from fourm.data.ingest_sources import (
    Candidate,
    IngestError,
    SourceState,
    is_glob,
    load_caption_mapping,
    open_source,
)
from fourm.io import atomic_output_dir, atomic_write_json, sha256_bytes, sha256_file
from fourm.params import IngestParams, SplitFractions

__all__ = [
    "QUARANTINE",
    "IngestError",
    "IngestReport",
    "image_id",
    "prepare_image",
    "run_ingest",
    "split_of_id",
]

INGEST_MODALITIES = ("rgb", "caption")
QUARANTINE = "quarantine.json"
ID_PREFIX = "img-"

# The rules an input can break (quarantine.json ``rules``), in report order.
RULES = ("empty_file", "not_image", "unreadable", "too_small", "duplicate", "unreadable_tar")


@dataclass
class IngestReport:
    path: str
    source: str
    num_images: int  # image candidates seen (ingested + quarantined, tar failures excluded)
    num_ingested: int
    num_quarantined: int
    quarantined: dict[str, int]  # rule -> entries
    splits: dict[str, int]
    num_shards: int
    bytes: int
    captions: dict[str, int]  # where captions came from: mapping, sidecar, member, none
    captions_unmatched: int  # mapping entries that named no image seen
    ignored: int  # files or tar members that are neither images nor captions of one
    seconds: float
    images_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Rejected(Exception):
    def __init__(self, rule: str, reason: str):
        super().__init__(reason)
        self.rule, self.reason = rule, reason


def split_of_id(sample_id: str, fractions: SplitFractions) -> str:
    """A split from a hash of the id: stable for an image, ``fractions`` in expectation."""
    u = int(sha256_bytes(sample_id.encode())[:16], 16) / 2**64
    if u < fractions.train:
        return "train"
    if u < fractions.train + fractions.val:
        return "val"
    return "test"


def image_id(data: bytes) -> str:
    return ID_PREFIX + sha256_bytes(data)[:16]


# -- images ----------------------------------------------------------------------

_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC}
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def to_rgb(im: Image.Image) -> Image.Image:
    """``im`` as RGB: alpha (or palette transparency) composited on white, 16-bit scaled to 8."""
    if im.mode in _SIXTEEN_BIT:
        a = np.asarray(im).astype(np.float64) / 257.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8), "L")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def prepare_image(data: bytes, params: IngestParams) -> np.ndarray:
    """Decode, check and resize one image; raises ``_Rejected`` with the rule it breaks."""
    if not data:
        raise _Rejected("empty_file", "zero-byte file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
    except Image.UnidentifiedImageError:
        raise _Rejected("not_image", "not an image PIL recognises") from None
    except Exception as err:  # PIL raises many types for corrupt input
        raise _Rejected("unreadable", f"corrupt image: {err}") from None
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if min(width, height) < params.min_size:
                raise _Rejected(
                    "too_small", f"{width}x{height}: shorter side under min_size {params.min_size}"
                )
            if im.format == "JPEG":  # decode at a reduced DCT scale, never below 2x the target
                im.draft(im.mode, (2 * params.resolution, 2 * params.resolution))
            im.load()
            upright = ImageOps.exif_transpose(im)
            rgb = to_rgb(upright)
    except _Rejected:
        raise
    except Exception as err:
        raise _Rejected("unreadable", f"cannot decode: {err}") from None
    size = (params.resolution, params.resolution)
    method = _RESAMPLE[params.resample]
    if params.mode == "center_crop":
        out = ImageOps.fit(rgb, size, method=method, centering=(0.5, 0.5))
    else:
        out = ImageOps.pad(rgb, size, method=method, color=params.pad_color, centering=(0.5, 0.5))
    return np.asarray(out, dtype=np.uint8)


# -- the stage -------------------------------------------------------------------


def _source_name(source: str) -> str:
    name = source.rstrip("/").rsplit("/", 1)[-1]
    name = name.removesuffix(".tar")
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-") or "images"


def run_ingest(params: IngestParams, source: str | Path, out_dir: Path, store: Any = None) -> IngestReport:
    """Ingest the images at ``source`` into a raw dataset at ``out_dir`` (all or nothing).

    ``store``: the ``ObjectStore`` for ``s3://`` sources (default: from settings).
    """
    start = time.perf_counter()
    source = str(source)
    if not source.startswith("s3://") and not is_glob(source):
        source = str(Path(source))  # one spelling per folder in the card ("a/b/" == "a/b")
    out_dir = Path(out_dir)
    mapping = load_caption_mapping(params.captions) if params.captions else {}
    state = SourceState()
    stream, progress = open_source(params, source, out_dir, mapping, state, store)

    quarantine: list[dict[str, Any]] = []
    kept_bytes: set[str] = set()  # ids ingested
    rejected: dict[str, tuple[str, str]] = {}  # id -> (rule, reason) of a rejected source
    kept_pixels: dict[str, str] = {}  # sha256 of the resized pixels -> id
    captions: Counter[str] = Counter()
    num_images = 0
    tars_done, current_tar = 0, None

    def reject(c: Candidate, sample_id: str | None, rule: str, reason: str) -> None:
        quarantine.append(
            {"id": sample_id, "source": c.source, "member": c.member, "rules": [rule], "reason": reason}
        )

    with atomic_output_dir(out_dir) as scratch:
        writer = DatasetWriter(scratch, "raw", INGEST_MODALITIES, params.samples_per_shard)
        try:
            for c in stream:
                if progress is not None and c.source != current_tar:
                    if current_tar is not None:
                        tars_done += 1
                        progress.update(tars_done, _rate_note(num_images, start))
                    current_tar = c.source
                if c.error is not None:
                    reject(c, None, "unreadable_tar", c.error)
                    continue
                num_images += 1
                try:
                    data = c.read()
                except OSError as err:
                    reject(c, None, "unreadable", f"cannot read: {err.strerror or err}")
                    continue
                sample_id = image_id(data)
                if sample_id in kept_bytes:
                    reject(c, sample_id, "duplicate", f"duplicate of {sample_id}")
                    continue
                if sample_id in rejected:
                    reject(c, sample_id, *rejected[sample_id])
                    continue
                try:
                    rgb = prepare_image(data, params)
                except _Rejected as r:
                    rejected[sample_id] = (r.rule, r.reason)
                    reject(c, sample_id, r.rule, r.reason)
                    continue
                del data
                pixels = sha256_bytes(rgb.tobytes())[:32]
                if pixels in kept_pixels:
                    first = kept_pixels[pixels]
                    reject(c, sample_id, "duplicate", f"duplicate of {first} (same pixels after resizing)")
                    continue
                kept_pixels[pixels] = sample_id
                kept_bytes.add(sample_id)
                captions[c.caption_from] += 1
                encoded = {"rgb": codecs.encode("rgb", rgb), "caption": codecs.encode("caption", c.caption)}
                writer.add(sample_id, split_of_id(sample_id, params.splits), encoded, {"caption": c.caption})
        finally:
            if progress is not None:
                progress.update(progress.total, _rate_note(num_images, start))
                progress.close()

        by_rule = Counter(rule for q in quarantine for rule in q["rules"])
        by_rule_sorted = {r: by_rule[r] for r in RULES if by_rule[r]}
        if not writer.rows:
            shown = ", ".join(f"{k}={v}" for k, v in by_rule_sorted.items()) or "none"
            raise IngestError(
                source, "nothing_ingested", f"all {num_images} images were rejected (by rule: {shown})"
            )
        atomic_write_json(scratch / QUARANTINE, quarantine)
        card = writer.finish(
            {
                "name": params.name or f"ingest-{_source_name(source)}",
                "source": "fourm.data.ingest",
                "origin": source,
                "resolution": params.resolution,
                "params": params.model_dump(mode="json"),
                "quarantine": {
                    "num": len(quarantine),
                    "rules": by_rule_sorted,
                    "sha256": sha256_file(scratch / QUARANTINE),
                },
            }
        )
        size = sum(s["size"] for s in card["shards"])

    seconds = time.perf_counter() - start
    return IngestReport(
        path=str(out_dir),
        source=source,
        num_images=num_images,
        num_ingested=card["num_samples"],
        num_quarantined=len(quarantine),
        quarantined=by_rule_sorted,
        splits=dict(sorted(Counter(r["split"] for r in writer.rows).items())),
        num_shards=len(card["shards"]),
        bytes=size,
        captions=dict(sorted(captions.items())),
        captions_unmatched=len(set(mapping) - state.used_mapping),
        ignored=state.ignored,
        seconds=round(seconds, 3),
        images_per_second=round(num_images / max(seconds, 1e-9), 1),
    )


def _rate_note(images: int, start: float) -> str:
    rate = images / max(time.perf_counter() - start, 1e-9)
    return f"{images} images, {rate:.1f} images/s"
