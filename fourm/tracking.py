"""Experiment tracking behind one small interface; W&B is the backend.

``FOURM_WANDB_MODE`` (settings) picks ``offline`` (the default: runs are kept
under ``<home>/wandb`` and can be synced later with ``wandb sync``), ``online``
(needs ``WANDB_API_KEY``) or ``disabled``. Training code calls ``log`` and
``summary`` only; it never imports wandb itself.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from fourm.settings import Settings


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def summary(self, metrics: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


class NullTracker:
    """Tracks nothing (``FOURM_WANDB_MODE=disabled``)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        return None

    def summary(self, metrics: dict[str, Any]) -> None:
        return None

    def finish(self) -> None:
        return None


class WandbTracker:
    """A W&B run; offline runs write to ``<home>/wandb``."""

    def __init__(self, settings: Settings, project: str, name: str, config: dict[str, Any]):
        import wandb

        directory = settings.home_dir / "wandb"
        directory.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=project,
            name=name,
            config=config,
            dir=str(directory),
            mode=settings.wandb_mode,
            reinit="finish_previous",
        )

    @property
    def directory(self) -> str:
        return self.run.dir

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        self.run.summary.update(metrics)

    def finish(self) -> None:
        self.run.finish()


def make_tracker(settings: Settings, project: str, name: str, config: dict[str, Any]) -> Tracker:
    """The tracker ``settings.wandb_mode`` asks for."""
    if settings.wandb_mode == "disabled":
        return NullTracker()
    if settings.wandb_mode not in ("offline", "online"):
        raise ValueError(f"FOURM_WANDB_MODE must be offline, online or disabled, got {settings.wandb_mode!r}")
    return WandbTracker(settings, project, name, config)
