"""How each modality is stored as bytes inside a shard (one file per sample and modality)."""

from __future__ import annotations

import io
import json
import threading
import zlib
from typing import Any

import numpy as np
from PIL import Image

# modality -> file extension inside the shard (float arrays: zlib-compressed .npy)
EXTENSIONS: dict[str, str] = {
    "rgb": "png",
    "caption": "txt",
    "scene": "json",
    "depth": "npy.zlib",
    "normal": "npy.zlib",
    "semseg": "png",
    "instance": "png",
    "boxes": "json",
    "edges": "png",
    "clip": "npy.zlib",
}


class DecodeError(ValueError):
    """Bytes of a modality could not be decoded."""


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _npy_zlib(array: np.ndarray) -> bytes:
    return zlib.compress(_npy(array), 6)


def encode(modality: str, value: Any) -> bytes:
    """Bytes of ``value`` in the modality's storage format."""
    ext = EXTENSIONS[modality]
    if ext == "png":
        return _png(np.asarray(value))
    if ext == "npy":
        return _npy(np.asarray(value))
    if ext == "npy.zlib":
        return _npy_zlib(np.asarray(value))
    if ext == "txt":
        return str(value).encode("utf-8")
    return json.dumps(value, sort_keys=True).encode("utf-8")


# CPython 3.11's AST constructor keeps its recursion depth in state shared between threads,
# so np.load's header parse (ast.literal_eval) in two threads at once can fail with a spurious
# "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905). The token
# loader reads shards in a thread pool, so every .npy parse goes through this lock.
_NPY_PARSE = threading.Lock()


def load_npy(data: bytes) -> np.ndarray:
    """A .npy array from bytes (no pickles), safe to call from several threads."""
    with _NPY_PARSE:
        return np.load(io.BytesIO(data), allow_pickle=False)


def decode(modality: str, data: bytes) -> Any:
    """Inverse of ``encode``; raises ``DecodeError`` on corrupt bytes."""
    ext = EXTENSIONS[modality]
    try:
        if ext == "png":
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return np.asarray(im)
        if ext == "npy":
            return load_npy(data)
        if ext == "npy.zlib":
            return load_npy(zlib.decompress(data))
        if ext == "txt":
            return data.decode("utf-8")
        return json.loads(data)
    except Exception as err:  # PIL/numpy raise many types for corrupt input
        raise DecodeError(f"{modality}: cannot decode {len(data)} bytes as {ext}: {err}") from err
