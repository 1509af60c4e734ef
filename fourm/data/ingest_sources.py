"""Where ``ingest`` finds its images: a folder, webdataset tars (a file, a folder, a glob
or ``s3://``), and the captions beside them or in a mapping file.

``open_source`` checks the source up front (bad input raises ``IngestError`` before
anything is written) and returns a stream of ``Candidate`` images, read lazily, each
with its caption and where the caption came from. What happens to each image is
``fourm/data/ingest.py``'s job.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fourm.params import IngestParams
from fourm.progress import StepProgress, track

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp"})
CAPTION_EXTENSIONS = ("txt", "caption")  # tar caption members, in order of preference


class IngestError(ValueError):
    """The ingest input as a whole is unusable; names the file and the rule. Nothing is written."""

    def __init__(self, path: str | Path, rule: str, message: str):
        super().__init__(f"{path}: {rule}: {message}")
        self.path = str(path)
        self.rule = rule


@dataclass
class Candidate:
    """One input image (or a failed tar when ``error`` is set)."""

    source: str
    member: str | None
    read: Callable[[], bytes]
    caption: str
    caption_from: str
    error: str | None = None


@dataclass
class SourceState:
    """What reading a source counted: files neither images nor their captions, mapping keys used."""

    ignored: int = 0
    used_mapping: set[str] = field(default_factory=set)


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
    root: Path, files: list[tuple[str, ...]], mapping: dict[str, str], state: SourceState
) -> tuple[int, Iterator[Candidate]]:
    rels = {"/".join(parts) for parts in files}
    images = [parts for parts in files if _ext(parts[-1]) in IMAGE_EXTENSIONS]
    stems = {posixpath.splitext("/".join(p))[0] for p in images}
    state.ignored = sum(
        1
        for parts in files
        if _ext(parts[-1]) not in IMAGE_EXTENSIONS
        and not (_ext(parts[-1]) == "txt" and posixpath.splitext("/".join(parts))[0] in stems)
    )

    def gen() -> Iterator[Candidate]:
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
            yield Candidate(rel, None, lambda path=path: _read_file(path), caption, caption_from)

    return len(images), gen()


@dataclass(frozen=True)
class _TarRef:
    name: str
    open: Callable[[], IO[bytes]]


def is_glob(text: str) -> bool:
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
    if is_glob(source):
        paths = [Path(p) for p in sorted(glob.glob(source, recursive=True)) if p.endswith(".tar")]
        return [_TarRef(str(p), lambda p=p: open(p, "rb")) for p in paths]
    path = Path(source)
    if path.is_file():
        return [_TarRef(path.name, lambda: open(path, "rb"))]
    tars = ["/".join(parts) for parts in _walk(path, skip) if _ext(parts[-1]) == "tar"]
    return [_TarRef(rel, lambda rel=rel: open(path / rel, "rb")) for rel in tars]


def _tar_groups(ref: _TarRef, state: SourceState) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
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


def _tar_candidates(refs: list[_TarRef], mapping: dict[str, str], state: SourceState) -> Iterator[Candidate]:
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
                    yield Candidate(ref.name, name, lambda data=data: data, caption, caption_from)
        except (tarfile.TarError, EOFError, OSError) as err:
            yield Candidate(ref.name, None, lambda: b"", "", "none", error=f"unreadable tar: {err}")


def _resolve_format(params: IngestParams, source: str) -> str:
    if params.source_format != "auto":
        return params.source_format
    if source.startswith("s3://") or is_glob(source) or source.endswith(".tar"):
        return "webdataset"
    return "images"


def open_source(
    params: IngestParams,
    source: str,
    out_dir: Path,
    mapping: dict[str, str],
    state: SourceState,
    store: Any,
) -> tuple[Iterator[Candidate], StepProgress | None]:
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
    if not source.startswith("s3://") and not is_glob(source) and not Path(source).exists():
        raise IngestError(source, "source_missing", "no such file or folder")
    refs = _tar_refs(source, store, out_dir.resolve())
    if not refs:
        raise IngestError(source, "no_images", "no .tar shards found")
    return _tar_candidates(refs, mapping, state), StepProgress(len(refs), "ingest tars", "tars")
