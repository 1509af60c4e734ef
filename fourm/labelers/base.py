"""The labeler protocol and the registry that selects labelers by name.

A labeler turns a batch of raw samples (RGB + what the source gave) into label
modalities. Implementations register under a unique name; params.yaml selects
one per label modality (``label.labelers``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class RawSample:
    """What a labeler sees of one sample."""

    id: str
    rgb: np.ndarray  # (H, W, 3) uint8
    caption: str
    scene: dict[str, Any] | None = None  # present for synthetic sources only


class LabelerError(RuntimeError):
    """A labeler could not label a sample; the message names labeler and sample."""


@runtime_checkable
class Labeler(Protocol):
    name: str
    version: str
    produces: tuple[str, ...]

    def __call__(self, batch: list[RawSample]) -> list[dict[str, Any]]:
        """One dict per sample, mapping each produced modality to its value."""
        ...

    def provenance(self) -> dict[str, Any]:
        """Name, version and (for model-backed labelers) model id and weights hash."""
        ...


_REGISTRY: dict[str, Callable[[], Labeler]] = {}


def register_labeler(name: str) -> Callable[[Callable[[], Labeler]], Callable[[], Labeler]]:
    """Class decorator: make a labeler selectable by ``name``; duplicate names are refused."""

    def add(factory: Callable[[], Labeler]) -> Callable[[], Labeler]:
        if name in _REGISTRY:
            raise ValueError(f"labeler {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return add


def available_labelers() -> list[str]:
    return sorted(_REGISTRY)


def make_labeler(name: str) -> Labeler:
    if name not in _REGISTRY:
        raise LabelerError(f"unknown labeler {name!r}; available: {', '.join(available_labelers())}")
    return _REGISTRY[name]()
