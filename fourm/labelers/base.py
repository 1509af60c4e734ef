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


def _option_parameters(factory: Callable[..., Labeler]) -> tuple[list[inspect.Parameter], bool]:
    """The factory's named keyword parameters, and whether it takes any keyword at all.

    A class whose ``__init__`` passes ``**kwargs`` on to its base also takes the base's
    options, so the chain of ``__init__``s is followed until one names all it takes."""
    inits = (
        [c.__init__ for c in inspect.getmro(factory) if "__init__" in vars(c)]
        if inspect.isclass(factory)
        else []
    )
    found: dict[str, inspect.Parameter] = {}
    for fn in inits or [factory]:
        if fn is object.__init__:  # nothing further up takes options
            return list(found.values()), False
        forwards = False
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                forwards = True
            elif p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self":
                found.setdefault(p.name, p)
        if not forwards:
            return list(found.values()), False
    return list(found.values()), True


def labeler_options(name: str) -> list[str]:
    """Names of the options (constructor keyword arguments) the labeler ``name`` accepts."""
    return [p.name for p in _option_parameters(_factory(name))[0]]


def make_labeler(name: str, options: Mapping[str, Any] | None = None) -> Labeler:
    """The labeler registered as ``name``, built with ``options`` (params.yaml ``label.options.<name>``).

    An option the labeler does not take is refused with a message naming labeler and option."""
    factory = _factory(name)
    options = dict(options or {})
    parameters, takes_any = _option_parameters(factory)
    accepted = [p.name for p in parameters]
    unknown = [] if takes_any else sorted(set(options) - set(accepted))
    if unknown:
        takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes no options"
        raise LabelerError(
            f"label.options.{name}: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))} for labeler {name!r}; {takes}"
        )
    required = [p.name for p in parameters if p.default is p.empty]
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
