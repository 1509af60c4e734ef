"""Small file helpers: hashing and all-or-nothing outputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_output_dir(path: Path | str) -> Iterator[Path]:
    """Yield a scratch directory that replaces ``path`` only if the block succeeds.

    On any exception the scratch directory is removed and ``path`` is left as it
    was, so a failed stage never leaves half-written outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    os.chmod(scratch, 0o755)
    if not path.exists():
        os.replace(scratch, path)
        return
    # Move the old output aside first, so that at every instant either it or the
    # new one is complete at ``path`` (a crash in between leaves the aside copy).
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, aside / path.name)
    os.replace(scratch, path)
    shutil.rmtree(aside, ignore_errors=True)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path | str, obj: object) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def canonical_json(obj: object) -> bytes:
    """Deterministic JSON bytes (sorted keys, no whitespace variance)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# Timings differ run to run; reports are DVC metrics and must be reproducible.
_TIMINGS = ("seconds", "scenes_per_second", "samples_per_second", "images_per_second")


def without_timings(report: Any) -> Any:
    """``report`` with run-to-run timings removed at every level (reports are DVC metrics)."""
    if isinstance(report, dict):
        return {k: without_timings(v) for k, v in report.items() if k not in _TIMINGS}
    if isinstance(report, list):
        return [without_timings(v) for v in report]
    return report
