"""Model references: ``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS`` (a stage name works as an alias)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fourm.registry.errors import BadReference
from fourm.registry.models import STAGES

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"
_ALIAS = r"[a-z][a-z0-9_-]{0,99}"
_REF = re.compile(rf"^(?P<name>{_NAME})(?::(?P<version>[1-9][0-9]*)|@(?P<alias>{_ALIAS}))?$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


def parse_ref(text: str) -> ModelRef:
    """Parse a reference; a malformed one raises ``BadReference`` saying the accepted forms."""
    m = _REF.match(text.strip())
    if not m:
        raise BadReference(
            f"malformed model reference {text!r}; expected NAME, NAME:VERSION (VERSION >= 1) or NAME@ALIAS"
        )
    version = m.group("version")
    return ModelRef(m.group("name"), int(version) if version else None, m.group("alias"))


def check_alias(alias: str) -> str:
    """Validate an alias name: lowercase, not a number, not a stage name."""
    if not re.fullmatch(_ALIAS, alias):
        raise BadReference(
            f"alias {alias!r}: use lowercase letters, digits, '-' or '_', starting with a letter"
        )
    if alias in STAGES:
        raise BadReference(f"alias {alias!r} is a stage name; stages are set with promote")
    return alias
