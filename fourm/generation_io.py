"""Files in and out of ``fourm generate``: read each input, write each output viewable and raw.

Inputs (``--input NAME=VALUE``): rgb from an image file (png/jpg/webp); depth and
normal from ``.npy``; semseg from ``.npy`` or a png of class ids; caption as text
(or ``@file.txt``); boxes as JSON (or ``@file.json``): ``[{"class": .., "bbox":
[xmin, ymin, xmax, ymax]}]``. Outputs: ``<name>.png`` (depth and normals
colour-mapped, semseg with the palette, boxes drawn on the RGB, the caption
rendered as text), the raw values (``.npy``, ``.txt``, ``.json``) and
``grid.png``, every input and output side by side.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fourm.data.preview import colorize_depth, colorize_normals, colorize_semseg, draw_boxes
from fourm.io import atomic_write_bytes
from fourm.modalities import get_modality

SCALE = 3


class InputError(ValueError):
    """An input file or value that cannot be read as its modality."""


def parse_assignment(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> (name, value), the name checked against the modality registry."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise InputError(f"--input {text!r}: expected NAME=VALUE, e.g. rgb=photo.png or caption='a red cube'")
    name = name.strip()
    try:
        get_modality(name)
    except KeyError as err:
        raise InputError(f"--input {text!r}: {err}") from None
    return name, value


def _path(value: str, name: str) -> Path:
    path = Path(value[1:] if value.startswith("@") else value)
    if not path.is_file():
        raise InputError(f"{name} input: {path}: no such file")
    return path


def read_input(name: str, value: str) -> Any:
    """The value of modality ``name`` given on the command line (a file path or, for text, a string)."""
    if name == "caption":
        return _path(value, name).read_text().strip() if value.startswith("@") else value
    if name == "boxes":
        text = _path(value, name).read_text() if value.startswith("@") or value.endswith(".json") else value
        try:
            boxes = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"boxes input: not valid JSON ({err})") from None
        if not isinstance(boxes, list) or not all(
            isinstance(b, dict) and {"class", "bbox"} <= b.keys() for b in boxes
        ):
            raise InputError('boxes input: expected a JSON list of {"class": name, "bbox": [x0, y0, x1, y1]}')
        return boxes
    path = _path(value, name)
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InputError(f"{name} input: {path}: not a numpy array file ({err})") from None
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert("RGB") if name == "rgb" else img)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{name} input: {path}: not a readable image ({err})") from None


def viewable(name: str, value: Any, background: np.ndarray | None = None) -> Image.Image:
    """A picture of one value of modality ``name``."""
    if name == "rgb":
        rgb = np.asarray(value)
    elif name == "depth":
        rgb = colorize_depth(np.asarray(value))
    elif name == "normal":
        rgb = colorize_normals(np.asarray(value))
    elif name == "semseg":
        rgb = colorize_semseg(np.asarray(value))
    elif name == "boxes":
        base = background if background is not None else np.full((64, 64, 3), 255, np.uint8)
        return draw_boxes(base, value, SCALE)
    else:
        return _caption_card(str(value), 64 * SCALE)
    return Image.fromarray(rgb.astype(np.uint8)).resize(
        (rgb.shape[1] * SCALE, rgb.shape[0] * SCALE), Image.NEAREST
    )


def _caption_card(text: str, width: int) -> Image.Image:
    import textwrap

    from PIL import ImageDraw

    lines = textwrap.wrap(text, 30) or [""]
    img = Image.new("RGB", (width, max(width, 12 * len(lines) + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((4, 4 + 12 * i), line, fill=(0, 0, 0))
    return img


def _raw(name: str, value: Any) -> tuple[str, bytes]:
    if name == "caption":
        return f"{name}.txt", (str(value) + "\n").encode()
    if name == "boxes":
        return f"{name}.json", json.dumps(value, indent=1).encode()
    buf = io.BytesIO()
    np.save(buf, np.asarray(value), allow_pickle=False)
    return f"{name}.npy", buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_outputs(out_dir: Path, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> list[str]:
    """Each output as ``<name>.png`` plus its raw file, and ``grid.png``; returns the file names."""
    background = outputs.get("rgb", inputs.get("rgb"))
    background = None if background is None else np.asarray(background)
    written = []
    for name, value in outputs.items():
        atomic_write_bytes(out_dir / f"{name}.png", _png(viewable(name, value, background)))
        raw_name, data = _raw(name, value)
        atomic_write_bytes(out_dir / raw_name, data)
        written += [f"{name}.png", raw_name]
    tiles = [(f"in: {n}", viewable(n, v, background)) for n, v in inputs.items()]
    tiles += [(f"out: {n}", viewable(n, v, background)) for n, v in outputs.items()]
    atomic_write_bytes(out_dir / "grid.png", _png(_side_by_side(tiles)))
    return [*written, "grid.png"]


def _side_by_side(tiles: list[tuple[str, Image.Image]]) -> Image.Image:
    from PIL import ImageDraw

    size = 64 * SCALE
    canvas = Image.new("RGB", (len(tiles) * (size + 6), size + 16), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(tiles):
        x = i * (size + 6)
        draw.text((x + 2, 2), label, fill=(0, 0, 0))
        canvas.paste(img.resize((size, size)) if img.size != (size, size) else img, (x, 16))
    return canvas
