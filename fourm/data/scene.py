"""Scene graphs of the synthetic dataset: sampling them and describing them in words.

A scene is plain data (JSON-able): a camera, a directional light and 1-6 objects
standing on a ground plane. ``render_scene`` (in ``raycast.py``) turns it into
pixels; ``caption`` turns it into a sentence. World axes: y up, ground at y=0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Semantic classes; id = index. 0 is the floor (background).
CLASSES: tuple[str, ...] = ("floor", "sphere", "cube", "cylinder")
SHAPES: tuple[str, ...] = CLASSES[1:]
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.12),
    "green": (0.15, 0.65, 0.2),
    "blue": (0.15, 0.3, 0.85),
    "yellow": (0.92, 0.82, 0.15),
    "purple": (0.55, 0.2, 0.7),
    "cyan": (0.15, 0.75, 0.8),
    "orange": (0.95, 0.5, 0.1),
    "white": (0.92, 0.92, 0.9),
}
SIZES: dict[str, float] = {"small": 0.45, "large": 0.85}
_PLACEMENT_RADIUS = 3.6
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    x: float
    z: float
    rotation: float  # radians about the vertical axis (cubes)

    @property
    def extent(self) -> float:
        """Radius (sphere, cylinder) or half side (cube)."""
        return SIZES[self.size]

    @property
    def class_id(self) -> int:
        return CLASSES.index(self.shape)

    @property
    def name(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Camera:
    position: tuple[float, float, float]
    target: tuple[float, float, float]
    fov_degrees: float


@dataclass(frozen=True)
class Scene:
    camera: Camera
    light_direction: tuple[float, float, float]  # unit vector pointing towards the light
    objects: tuple[SceneObject, ...]

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict) -> Scene:
        return Scene(
            camera=Camera(
                position=tuple(data["camera"]["position"]),
                target=tuple(data["camera"]["target"]),
                fov_degrees=float(data["camera"]["fov_degrees"]),
            ),
            light_direction=tuple(data["light_direction"]),
            objects=tuple(SceneObject(**o) for o in data["objects"]),
        )


def sample_scene(rng: np.random.Generator, min_objects: int, max_objects: int) -> Scene:
    """Draw a random scene; objects never overlap and stand inside the view."""
    n_objects = int(rng.integers(min_objects, max_objects + 1))
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = math.radians(rng.uniform(32, 48))
    distance = rng.uniform(9.0, 10.5)
    camera = Camera(
        position=(
            distance * math.cos(elevation) * math.cos(azimuth),
            distance * math.sin(elevation),
            distance * math.cos(elevation) * math.sin(azimuth),
        ),
        target=(0.0, 0.0, 0.0),
        fov_degrees=45.0,
    )
    light_az = rng.uniform(0, 2 * math.pi)
    light_el = math.radians(rng.uniform(40, 65))
    light = (
        math.cos(light_el) * math.cos(light_az),
        math.sin(light_el),
        math.cos(light_el) * math.sin(light_az),
    )
    objects: list[SceneObject] = []
    while len(objects) < n_objects:
        size = str(rng.choice(list(SIZES)))
        extent = SIZES[size]
        radius = math.sqrt(rng.uniform(0, 1)) * (_PLACEMENT_RADIUS - extent)
        angle = rng.uniform(0, 2 * math.pi)
        x, z = radius * math.cos(angle), radius * math.sin(angle)
        footprint = extent * math.sqrt(2)  # a cube's corner reaches this far
        if any(
            math.hypot(x - o.x, z - o.z) < footprint + o.extent * math.sqrt(2) + 0.15
            for o in objects
        ):
            continue
        objects.append(
            SceneObject(
                shape=str(rng.choice(SHAPES)),
                color=str(rng.choice(list(COLORS))),
                size=size,
                x=float(x),
                z=float(z),
                rotation=float(rng.uniform(0, math.pi / 2)),
            )
        )
    return Scene(camera=camera, light_direction=light, objects=tuple(objects))


def camera_basis(camera: Camera) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(right, up, forward) unit vectors of the camera in world space."""
    forward = np.subtract(camera.target, camera.position).astype(np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return right, up, forward


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """Describe the scene: every object with its attributes, plus spatial relations."""
    objs = list(scene.objects)
    right, _, forward = camera_basis(scene.camera)
    cam = np.asarray(scene.camera.position)
    centres = [np.array([o.x, o.extent, o.z]) - cam for o in objs]
    lateral = [float(np.dot(c, right)) for c in centres]
    depth = [float(np.dot(c, forward)) for c in centres]
    # Order objects left to right as they appear in the image (perspective: lateral / depth).
    order = sorted(range(len(objs)), key=lambda i: lateral[i] / depth[i])
    names = [f"a {objs[i].name}" for i in order]
    listing = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    count = _NUMBER_WORDS[len(objs)]
    noun = "object" if len(objs) == 1 else "objects"
    opening = [
        f"A scene with {count} {noun} on a checkered floor: {listing}.",
        f"There {'is' if len(objs) == 1 else 'are'} {count} {noun} on the floor: {listing}.",
        f"This image shows {listing} on a tiled floor.",
        f"{listing[0].upper()}{listing[1:]} {'stands' if len(objs) == 1 else 'stand'} on the ground.",
    ]
    sentences = [opening[int(rng.integers(len(opening)))]]
    pairs = [(a, b) for a in range(len(objs)) for b in range(len(objs)) if a < b]
    rng.shuffle(pairs)
    for a, b in pairs[:2]:
        sentences.append(_relation(objs[a], objs[b], lateral[a] - lateral[b], depth[a] - depth[b]))
    return " ".join(sentences)


def _relation(a: SceneObject, b: SceneObject, d_lateral: float, d_depth: float) -> str:
    an, bn = a.name, b.name  # with the size: two objects may share colour and shape
    if abs(d_lateral) >= abs(d_depth):
        where = "to the left of" if d_lateral < 0 else "to the right of"
    else:
        where = "in front of" if d_depth < 0 else "behind"
    return f"The {an} is {where} the {bn}."
