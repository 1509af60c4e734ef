"""Real photographs for tests: scikit-image's sample images, cropped into many distinct pictures."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# colour photographs that ship inside scikit-image (no download)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def photo_crops(per_photo: int, size: int = 160) -> dict[str, np.ndarray]:
    """``per_photo`` square crops of each sample photograph, name -> uint8 (size, size, 3)."""
    from skimage import data

    out: dict[str, np.ndarray] = {}
    for name in PHOTOS:
        photo = getattr(data, name)()[..., :3]
        h, w = photo.shape[:2]
        side = min(size, h, w)
        for i in range(per_photo):
            # corners walk along the diagonal, so the crops overlap but never repeat
            y = (h - side) * i // max(per_photo - 1, 1)
            x = (w - side) * (per_photo - 1 - i) // max(per_photo - 1, 1)
            out[f"{name}_{i:02d}"] = np.ascontiguousarray(photo[y : y + side, x : x + side])
    return out


def write_photo_folder(root: Path, per_photo: int = 8, captioned_every: int = 3) -> dict[str, Path]:
    """A folder of JPEG/PNG crops (every ``captioned_every``-th with a sidecar caption), plus two
    bad files that ingest must quarantine. Returns name -> path of the good images."""
    root.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for i, (name, crop) in enumerate(sorted(photo_crops(per_photo).items())):
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        path = root / name.split("_")[0] / f"{name}.{ext}"
        path.parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(crop).save(buf, format=fmt)
        path.write_bytes(buf.getvalue())
        if i % captioned_every == 0:
            path.with_suffix(".txt").write_text(f"a photograph of {name.split('_')[0].replace('_', ' ')}\n")
        written[name] = path
    (root / "bad").mkdir(exist_ok=True)
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "notes.png").write_text("not a picture\n")
    return written
