"""The ``ingest`` stage: real images (a folder, or webdataset tars) into a raw dataset.

The output is a raw dataset exactly like the one ``generate`` writes, minus the
synthetic ``scene`` member: members ``rgb`` (``resolution`` square, RGB, PNG)
and ``caption`` (text, possibly empty), the same manifest columns and card
fields, so validate -> label -> tokenizers read it the same way. Beside it,
``quarantine.json`` lists every rejected input with the rule it broke.

Sources
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

import csv
import glob
import io
import json
import os
import posixpath
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

from fourm.data import codecs
from fourm.data.format import DatasetWriter
from fourm.io import atomic_output_dir, atomic_write_json, sha256_bytes, sha256_file
from fourm.params import IngestParams, SplitFractions
from fourm.progress import StepProgress, track

INGEST_MODALITIES = ("rgb", "caption")
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp"})
CAPTION_EXTENSIONS = ("txt", "caption")  # tar caption members, in order of preference
QUARANTINE = "quarantine.json"
ID_PREFIX = "img-"

# The rules an input can break (quarantine.json ``rules``), in report order.
RULES = ("empty_file", "not_image", "unreadable", "too_small", "duplicate", "unreadable_tar")

class IngestError(ValueError):
    """The ingest input as a whole is unusable; names the file and the rule. Nothing is written."""

    def __init__(self, path: str | Path, rule: str, message: str):
        super().__init__(f"{path}: {rule}: {message}")
        self.path = str(path)
        self.rule = rule


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


@dataclass
class _Candidate:
    """One input image (or a failed tar when ``error`` is set)."""

    source: str
    member: str | None
    read: Callable[[], bytes]
    caption: str
    caption_from: str
    error: str | None = None


@dataclass
class _State:
    ignored: int = 0
    used_mapping: set[str] = field(default_factory=set)


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


# -- caption mapping -------------------------------------------------------------


def _norm_key(name: str) -> str:
    key = posixpath.normpath(name.replace("\\", "/").strip())
    return key[2:] if key.startswith("./") else key


def load_caption_mapping(path: str | Path) -> dict[str, str]:
    """``file -> caption`` from a CSV (``file,caption``) or JSONL file; bad files raise IngestError."""
    path = Path(path)
    if not path.is_file():
        raise IngestError(path, "captions_missing", "the caption mapping file does not exist")
    suffix = path.suffix.lower()
    mapping: dict[str, str] = {}

    def put(name: Any, caption: Any, where: str) -> None:
        if not isinstance(name, str) or not name.strip():
            raise IngestError(where, "captions_parse", "'file' must be a non-empty string")
        caption = "" if caption is None else str(caption).strip()
        key = _norm_key(name)
        if key in mapping and mapping[key] != caption:
            raise IngestError(where, "captions_conflict", f"{key!r} has two different captions")
        mapping[key] = caption

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if suffix == ".csv":
                reader = csv.DictReader(f)
                columns = reader.fieldnames or []
                for column in ("file", "caption"):
                    if column not in columns:
                        raise IngestError(
                            path, "captions_column", f"no column {column!r} (columns: {columns})"
                        )
                for row in reader:
                    put(row["file"], row["caption"], f"{path}:{reader.line_num}")
            elif suffix in (".jsonl", ".ndjson"):
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise IngestError(f"{path}:{n}", "captions_parse", f"not JSON: {err}") from None
                    if not isinstance(obj, dict):
                        raise IngestError(f"{path}:{n}", "captions_parse", "each line must be an object")
                    for column in ("file", "caption"):
                        if column not in obj:
                            raise IngestError(f"{path}:{n}", "captions_column", f"no key {column!r}")
                    put(obj["file"], obj["caption"], f"{path}:{n}")
            else:
                raise IngestError(path, "captions_format", "a caption mapping must be .csv or .jsonl")
    except UnicodeDecodeError as err:
        raise IngestError(path, "captions_parse", f"not UTF-8: {err}") from None
    except csv.Error as err:
        raise IngestError(path, "captions_parse", str(err)) from None
    return mapping


def _text(data: bytes) -> str:
    return data.decode("utf-8-sig", errors="replace").strip()


# -- sources ---------------------------------------------------------------------


def _ext(name: str) -> str:
    return name.rpartition(".")[2].lower() if "." in name else ""


def _read_file(path: Path) -> bytes:
    return path.read_bytes()


def _walk(root: Path, skip: Path | None) -> list[tuple[str, ...]]:
    """Relative path parts of every non-hidden file under ``root``, in sorted order."""
    found: list[tuple[str, ...]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith(".") and (skip is None or (here / d).resolve() != skip)
        )
        rel = here.relative_to(root).parts
        found.extend((*rel, name) for name in filenames if not name.startswith("."))
    return sorted(found)


def _folder_candidates(
    root: Path, files: list[tuple[str, ...]], mapping: dict[str, str], state: _State
) -> tuple[int, Iterator[_Candidate]]:
    rels = {"/".join(parts) for parts in files}
    images = [parts for parts in files if _ext(parts[-1]) in IMAGE_EXTENSIONS]
    stems = {posixpath.splitext("/".join(p))[0] for p in images}
    state.ignored = sum(
        1
        for parts in files
        if _ext(parts[-1]) not in IMAGE_EXTENSIONS
        and not (_ext(parts[-1]) == "txt" and posixpath.splitext("/".join(parts))[0] in stems)
    )

    def gen() -> Iterator[_Candidate]:
        for parts in images:
            rel = "/".join(parts)
            path = root.joinpath(*parts)
            sidecar = posixpath.splitext(rel)[0] + ".txt"
            if rel in mapping:
                state.used_mapping.add(rel)
                caption, caption_from = mapping[rel], "mapping"
            elif sidecar in rels:
                try:
                    caption, caption_from = _text(_read_file(root / sidecar)), "sidecar"
                except OSError:
                    caption, caption_from = "", "none"
            else:
                caption, caption_from = "", "none"
            yield _Candidate(rel, None, lambda path=path: _read_file(path), caption, caption_from)

    return len(images), gen()


@dataclass(frozen=True)
class _TarRef:
    name: str
    open: Callable[[], IO[bytes]]


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _tar_refs(source: str, store: Any, skip: Path | None) -> list[_TarRef]:
    if source.startswith("s3://"):
        from fourm.storage.object_store import ObjectStore, split_s3_uri

        if store is None:
            from fourm.settings import get_settings

            store = ObjectStore.from_settings(get_settings())
        bucket, prefix = split_s3_uri(source)
        if prefix.endswith(".tar"):
            keys = [prefix]
        else:
            keys = sorted(k for k in store.list(bucket, f"{prefix}/" if prefix else "") if k.endswith(".tar"))
        return [
            _TarRef(f"s3://{bucket}/{k}", lambda k=k: io.BytesIO(store.get_bytes(bucket, k))) for k in keys
        ]
    if _is_glob(source):
        paths = [Path(p) for p in sorted(glob.glob(source, recursive=True)) if p.endswith(".tar")]
        return [_TarRef(str(p), lambda p=p: open(p, "rb")) for p in paths]
    path = Path(source)
    if path.is_file():
        return [_TarRef(path.name, lambda: open(path, "rb"))]
    tars = ["/".join(parts) for parts in _walk(path, skip) if _ext(parts[-1]) == "tar"]
    return [_TarRef(rel, lambda rel=rel: open(path / rel, "rb")) for rel in tars]


def _tar_groups(ref: _TarRef, state: _State) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """``(key, {ext: (member name, bytes)})`` per run of members with one key; tar errors raise."""
    key: str | None = None
    members: dict[str, tuple[str, bytes]] = {}
    with ref.open() as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            dirname, base = posixpath.split(info.name)
            stem, _, ext = base.partition(".")
            ext = ext.lower()
            if base.startswith(".") or not (ext in IMAGE_EXTENSIONS or ext in CAPTION_EXTENSIONS):
                state.ignored += 1
                continue
            this = posixpath.join(dirname, stem)
            if key is not None and this != key:
                yield key, members
                members = {}
            key = this
            payload = tar.extractfile(info)
            members[ext] = (info.name, payload.read() if payload is not None else b"")
    if key is not None:
        yield key, members


def _tar_candidates(refs: list[_TarRef], mapping: dict[str, str], state: _State) -> Iterator[_Candidate]:
    for ref in refs:
        try:
            for _key, members in _tar_groups(ref, state):
                text = next((members[e] for e in CAPTION_EXTENSIONS if e in members), None)
                images = [members[e] for e in sorted(members) if e in IMAGE_EXTENSIONS]
                if not images and text is not None:
                    state.ignored += 1
                for name, data in images:
                    if (key := _norm_key(name)) in mapping:
                        state.used_mapping.add(key)
                        caption, caption_from = mapping[key], "mapping"
                    elif text is not None:
                        caption, caption_from = _text(text[1]), "member"
                    else:
                        caption, caption_from = "", "none"
                    yield _Candidate(ref.name, name, lambda data=data: data, caption, caption_from)
        except (tarfile.TarError, EOFError, OSError) as err:
            yield _Candidate(ref.name, None, lambda: b"", "", "none", error=f"unreadable tar: {err}")


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


def _resolve_format(params: IngestParams, source: str) -> str:
    if params.source_format != "auto":
        return params.source_format
    if source.startswith("s3://") or _is_glob(source) or source.endswith(".tar"):
        return "webdataset"
    return "images"


def _open_source(
    params: IngestParams,
    source: str,
    out_dir: Path,
    mapping: dict[str, str],
    state: _State,
    store: Any,
) -> tuple[Iterator[_Candidate], StepProgress | None]:
    """The candidates of ``source`` (checked up front: bad input raises before anything is written)."""
    kind = _resolve_format(params, source)
    files: list[tuple[str, ...]] = []
    if kind == "images":
        root = Path(source)
        if not root.exists():
            raise IngestError(root, "source_missing", "no such file or folder")
        if not root.is_dir():
            raise IngestError(root, "source_format", "an image source must be a folder (or a .tar)")
        files = _walk(root, out_dir.resolve())
        has_images = any(_ext(p[-1]) in IMAGE_EXTENSIONS for p in files)
        has_tars = any(_ext(p[-1]) == "tar" for p in files)
        if params.source_format == "auto" and has_tars:
            if has_images:
                raise IngestError(root, "mixed_source", "holds both images and .tar files; set source_format")
            kind = "webdataset"
    if kind == "images":
        total, candidates = _folder_candidates(root, files, mapping, state)
        if total == 0:
            raise IngestError(
                root, "no_images", f"no {'/'.join(sorted(IMAGE_EXTENSIONS))} files in the folder"
            )
        return track(candidates, total, "ingest images", "images"), None
    if not source.startswith("s3://") and not _is_glob(source) and not Path(source).exists():
        raise IngestError(source, "source_missing", "no such file or folder")
    refs = _tar_refs(source, store, out_dir.resolve())
    if not refs:
        raise IngestError(source, "no_images", "no .tar shards found")
    return _tar_candidates(refs, mapping, state), StepProgress(len(refs), "ingest tars", "tars")


def run_ingest(params: IngestParams, source: str | Path, out_dir: Path, store: Any = None) -> IngestReport:
    """Ingest the images at ``source`` into a raw dataset at ``out_dir`` (all or nothing).

    ``store``: the ``ObjectStore`` for ``s3://`` sources (default: from settings).
    """
    start = time.perf_counter()
    source = str(source)
    if not source.startswith("s3://") and not _is_glob(source):
        source = str(Path(source))  # one spelling per folder in the card ("a/b/" == "a/b")
    out_dir = Path(out_dir)
    mapping = load_caption_mapping(params.captions) if params.captions else {}
    state = _State()
    stream, progress = _open_source(params, source, out_dir, mapping, state, store)

    quarantine: list[dict[str, Any]] = []
    kept_bytes: set[str] = set()  # ids ingested
    rejected: dict[str, tuple[str, str]] = {}  # id -> (rule, reason) of a rejected source
    kept_pixels: dict[str, str] = {}  # sha256 of the resized pixels -> id
    captions: Counter[str] = Counter()
    num_images = 0
    tars_done, current_tar = 0, None

    def reject(c: _Candidate, sample_id: str | None, rule: str, reason: str) -> None:
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
