"""The labeler protocol and the registry that selects labelers by name.

A labeler turns a batch of raw samples (RGB + what the source gave) into label
modalities. Implementations register under a unique name; params.yaml selects
one per label modality (``label.labelers``) and gives it constructor options
(``label.options.<labeler name>``: keyword arguments of the registered factory).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
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


_REGISTRY: dict[str, Callable[..., Labeler]] = {}


def register_labeler(name: str) -> Callable[[Callable[..., Labeler]], Callable[..., Labeler]]:
    """Class decorator: make a labeler selectable by ``name``; duplicate names are refused.

    The factory's keyword arguments are the labeler's options (``label.options.<name>``)."""

    def add(factory: Callable[..., Labeler]) -> Callable[..., Labeler]:
        if name in _REGISTRY:
            raise ValueError(f"labeler {name!r} is already registered ({_REGISTRY[name]!r})")
        _REGISTRY[name] = factory
        return factory

    return add


def available_labelers() -> list[str]:
    return sorted(_REGISTRY)


def labeler_options(name: str) -> list[str]:
    """Names of the options (constructor keyword arguments) the labeler ``name`` accepts."""
    factory = _factory(name)
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def make_labeler(name: str, options: Mapping[str, Any] | None = None) -> Labeler:
    """The labeler registered as ``name``, built with ``options`` (params.yaml ``label.options.<name>``).

    An option the labeler does not take is refused with a message naming labeler and option."""
    factory = _factory(name)
    options = dict(options or {})
    accepted = labeler_options(name)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(factory).parameters.values())
    unknown = [] if takes_any else sorted(set(options) - set(accepted))
    if unknown:
        takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes no options"
        raise LabelerError(
            f"label.options.{name}: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} for labeler {name!r}; {takes}"
        )
    required = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    missing = [r for r in required if r not in options]
    if missing:
        raise LabelerError(
            f"label.options.{name}: labeler {name!r} needs option{'s' if len(missing) > 1 else ''} "
            f"{', '.join(map(repr, missing))} (e.g. label.options.{name}.{missing[0]} in params.yaml)"
        )
    return factory(**options)


def _factory(name: str) -> Callable[..., Labeler]:
    if name not in _REGISTRY:
        raise LabelerError(f"unknown labeler {name!r}; available: {', '.join(available_labelers())}")
    return _REGISTRY[name]
