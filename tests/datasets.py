"""Test helpers: tiny datasets and planted defects.

``replace_member`` rewrites one sample's bytes *and* the dataset's hashes, so the
planted defect is the only thing wrong (the shard sha256 still matches).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

from fourm.data.format import DATASET_CARD, MANIFEST, SHARD_DIR, member_name, write_manifest
from fourm.data.generate import run_generate
from fourm.data.samples import DatasetInputs
from fourm.io import sha256_bytes, sha256_file
from fourm.labelers.stage import run_label
from fourm.params import GenerateParams, LabelParams


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rows(root: Path) -> list[dict]:
    return pq.read_table(root / MANIFEST).to_pylist()


def _rewrite_shard(root: Path, shard: str, edit) -> None:  # noqa: ANN001
    path = root / SHARD_DIR / shard
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in members:
            info, data = edit(info, data)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def _refresh_card(root: Path) -> None:
    card = json.loads((root / DATASET_CARD).read_text())
    for shard in card["shards"]:
        p = root / SHARD_DIR / shard["name"]
        shard["sha256"], shard["size"] = sha256_file(p), p.stat().st_size
    card["manifest_sha256"] = sha256_file(root / MANIFEST)
    (root / DATASET_CARD).write_text(json.dumps(card, indent=2, sort_keys=True))


def replace_member(root: Path, sample_id: str, modality: str, data: bytes) -> None:
    """Give ``sample_id``'s ``modality`` new bytes; keep every hash consistent."""
    rows = _rows(root)
    row = next(r for r in rows if r["id"] == sample_id)
    name = member_name(sample_id, modality)

    def edit(info, payload):  # noqa: ANN001
        return info, (data if info.name == name else payload)

    _rewrite_shard(root, row["shard"], edit)
    row[f"sha256_{modality}"], row[f"size_{modality}"] = sha256_bytes(data), len(data)
    write_manifest(root / MANIFEST, rows)
    _refresh_card(root)


def rename_sample(root: Path, old_id: str, new_id: str) -> None:
    """Give sample ``old_id`` the id ``new_id`` (e.g. an existing id, to plant a duplicate)."""
    rows = _rows(root)
    row = next(r for r in rows if r["id"] == old_id)

    def edit(info, payload):  # noqa: ANN001
        if info.name.startswith(old_id + "."):
            info.name = new_id + info.name[len(old_id) :]
        return info, payload

    _rewrite_shard(root, row["shard"], edit)
    row["id"] = new_id
    write_manifest(root / MANIFEST, rows)
    _refresh_card(root)


def tamper_shard(root: Path, shard: str) -> None:
    """Flip bytes inside a shard *without* updating dataset.json (a corrupted copy)."""
    path = root / SHARD_DIR / shard
    data = bytearray(path.read_bytes())
    data[1024:1032] = b"\xff" * 8
    path.write_bytes(bytes(data))


def read_member(root: Path, sample_id: str, modality: str) -> bytes:
    row = next(r for r in _rows(root) if r["id"] == sample_id)
    with tarfile.open(root / SHARD_DIR / row["shard"]) as tar:
        return tar.extractfile(member_name(sample_id, modality)).read()


def tiny_labeled_dataset(root: Path, num_scenes: int = 24, samples_per_shard: int = 8) -> DatasetInputs:
    """A generated + oracle-labeled dataset under ``root`` (raw/, labels/), all samples accepted."""
    raw, labels = root / "raw", root / "labels"
    if not (labels / "dataset.json").exists():
        gen = GenerateParams(num_scenes=num_scenes, samples_per_shard=samples_per_shard, workers=1)
        run_generate(gen, raw)
        run_label(LabelParams(), raw, raw / "manifest.parquet", labels)
    return DatasetInputs(raw, labels, labels / "manifest.parquet")
