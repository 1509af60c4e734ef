"""Typed registry errors: each carries a one-line message fit for the CLI."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """Base class; also unreachable or incompatible databases."""


class NotFound(RegistryError):
    """An unknown model, version, alias or artifact."""


class BadReference(RegistryError):
    """A malformed ``NAME[:VERSION|@ALIAS]`` reference."""


class GateFailed(RegistryError):
    """A promotion gate refused the promotion; ``results`` holds every gate's verdict."""

    def __init__(self, message: str, results: dict):
        super().__init__(message)
        self.results = results
