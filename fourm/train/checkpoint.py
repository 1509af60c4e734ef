"""Training checkpoints: one file per saved step, written atomically, mirrored to S3.

Layout of a checkpoint directory (local, and the same under an ``s3://`` prefix)::

    step-00000500.pt   torch.save of the state dict below
    latest.json        {"step": 500, "file": "step-00000500.pt", "sha256": ...}, written last

A file only appears under its final name once complete (temp file + rename; on S3 the
object is uploaded before ``latest.json`` points at it), so a crash at any moment leaves
the previous checkpoint intact and ``latest.json`` naming a whole file. Older files
beyond ``keep`` are removed after the new one is in place.

State dict: ``step``, ``model``, ``optimizer``, ``scheduler``, ``rng`` (torch, numpy,
python), ``loader``, ``model_config``, ``train`` (the run's fingerprint: what must match
to resume), ``history`` (per-step metrics so far).
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fourm.io import atomic_write_bytes, atomic_write_json, sha256_bytes
from fourm.storage.object_store import ObjectStore, split_s3_uri

LATEST = "latest.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not match the run."""


def step_file(step: int) -> str:
    return f"step-{step:08d}.pt"


def rng_state() -> dict[str, Any]:
    """The process's random states: torch (CPU and CUDA), numpy, python."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device only
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _serialise(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class CheckpointStore:
    """Saves and finds checkpoints in ``directory`` and, when given, mirrors them to ``uri``."""

    def __init__(
        self,
        directory: Path | str,
        uri: str | None = None,
        store: ObjectStore | None = None,
        keep: int = 2,
    ):
        if uri and store is None:
            raise ValueError("an s3:// checkpoint uri needs an ObjectStore")
        self.directory = Path(directory)
        self.uri = uri.rstrip("/") if uri else None
        self.store = store
        self.keep = max(1, keep)

    # -- writing ------------------------------------------------------------------------

    def save(self, state: dict[str, Any]) -> dict[str, Any]:
        """Write ``state`` (must hold ``step``) locally then to S3; returns the latest record."""
        step = int(state["step"])
        data = _serialise(state)
        record = {"step": step, "file": step_file(step), "sha256": sha256_bytes(data), "size": len(data)}
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.directory / record["file"], data)
        atomic_write_json(self.directory / LATEST, record)
        if self.uri:
            bucket, prefix = split_s3_uri(self.uri)
            self.store.ensure_bucket(bucket)
            self.store.put_bytes(bucket, f"{prefix}/{record['file']}", data)
            self.store.put_bytes(bucket, f"{prefix}/{LATEST}", json.dumps(record).encode())
        self._prune(step)
        return record

    def _prune(self, current: int) -> None:
        files = sorted(self.directory.glob("step-*.pt"))
        for old in files[: max(0, len(files) - self.keep)]:
            if old.name != step_file(current):
                old.unlink(missing_ok=True)
        if self.uri:
            bucket, prefix = split_s3_uri(self.uri)
            keys = sorted(k for k in self.store.list(bucket, f"{prefix}/step-") if k.endswith(".pt"))
            for key in keys[: max(0, len(keys) - self.keep)]:
                if not key.endswith(step_file(current)):
                    self.store.delete(bucket, key)

    # -- reading ------------------------------------------------------------------------

    def latest(self) -> dict[str, Any] | None:
        """The newest complete checkpoint's record, local or on S3 (whichever is further)."""
        candidates = []
        local = self.directory / LATEST
        if local.exists():
            candidates.append({**json.loads(local.read_text()), "where": "local"})
        if self.uri:
            bucket, prefix = split_s3_uri(self.uri)
            if self.store.exists(bucket, f"{prefix}/{LATEST}"):
                remote = json.loads(self.store.get_bytes(bucket, f"{prefix}/{LATEST}"))
                candidates.append({**remote, "where": "s3"})
        return max(candidates, key=lambda r: (r["step"], r["where"] == "local"), default=None)

    def load(self, record: dict[str, Any] | None = None) -> dict[str, Any]:
        """The state dict of ``record`` (default: the latest), its sha256 checked."""
        record = record or self.latest()
        if record is None:
            raise CheckpointError(
                f"no checkpoint in {self.directory}" + (f" or {self.uri}" if self.uri else "")
            )
        if record.get("where") == "s3":
            bucket, prefix = split_s3_uri(self.uri or "")
            where = f"{self.uri}/{record['file']}"
            data = self.store.get_bytes(bucket, f"{prefix}/{record['file']}")
        else:
            path = self.directory / record["file"]
            where = str(path)
            if not path.exists():
                raise CheckpointError(f"{where}: named by {self.directory / LATEST} but missing")
            data = path.read_bytes()
        if sha256_bytes(data) != record["sha256"]:
            raise CheckpointError(f"{where}: sha256 differs from {LATEST}'s record (corrupt or partial file)")
        return load_state_bytes(data, where)


def load_state_bytes(data: bytes, where: str) -> dict[str, Any]:
    """A checkpoint's state dict from its bytes; errors name ``where``."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise CheckpointError(f"{where}: not a readable checkpoint ({err})") from err
    missing = [k for k in ("step", "model", "model_config") if k not in state]
    if missing:
        raise CheckpointError(f"{where}: not a fourm training checkpoint (missing {missing})")
    return state
