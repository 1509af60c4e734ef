"""Procedural multimodal scenes: fourm's embedded default dataset.

``make_sample(seed, index, ...)`` is a pure function: the same arguments give
byte-identical outputs on any machine run, independent of worker count, because
every scene draws from its own generator seeded by ``(seed, index)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fourm.data.raycast import Rendered, boxes_from_instances, render_scene
from fourm.data.scene import Scene, caption, sample_scene

# A scene is redrawn until every object shows at least this many pixels (and
# this fraction of the image), so every object the caption names is visible.
MIN_VISIBLE_PIXELS = 12
MIN_VISIBLE_FRACTION = 0.002
_MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class SyntheticSample:
    """Everything the renderer knows about one scene, pixel-aligned."""

    id: str
    split: str
    scene: Scene
    caption: str
    rendered: Rendered
    boxes: list[dict]


def split_of(index: int, num_scenes: int, fractions: dict[str, float]) -> str:
    """Contiguous split assignment: the first ``train`` fraction, then ``val``, then ``test``."""
    n_train = round(num_scenes * fractions["train"])
    n_val = round(num_scenes * fractions["val"])
    if index < n_train:
        return "train"
    if index < n_train + n_val:
        return "val"
    return "test"


def sample_id(seed: int, index: int) -> str:
    return f"syn{seed}-{index:07d}"


def _all_visible(rendered: Rendered, scene: Scene) -> bool:
    need = max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * rendered.instance.size)
    counts = np.bincount(rendered.instance.ravel(), minlength=len(scene.objects) + 1)
    return bool((counts[1:] >= need).all())


def make_scene(
    seed: int, index: int, resolution: int, min_objects: int, max_objects: int
) -> tuple[Scene, Rendered, np.random.Generator]:
    """Draw scene ``index`` of dataset ``seed`` (redrawn until all objects are visible)."""
    rng = np.random.default_rng([seed, index])
    for _ in range(_MAX_ATTEMPTS):
        scene = sample_scene(rng, min_objects, max_objects)
        rendered = render_scene(scene, resolution)
        if _all_visible(rendered, scene):
            return scene, rendered, rng
    raise RuntimeError(
        f"scene {index} of seed {seed}: no draw with every object visible after "
        f"{_MAX_ATTEMPTS} attempts at resolution {resolution}"
    )


def make_sample(
    seed: int,
    index: int,
    resolution: int = 64,
    min_objects: int = 1,
    max_objects: int = 6,
    split: str = "train",
) -> SyntheticSample:
    """Render sample ``index`` of the dataset with ``seed``."""
    scene, rendered, rng = make_scene(seed, index, resolution, min_objects, max_objects)
    return SyntheticSample(
        id=sample_id(seed, index),
        split=split,
        scene=scene,
        caption=caption(scene, rng),
        rendered=rendered,
        boxes=boxes_from_instances(rendered.instance, scene),
    )
