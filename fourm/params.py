"""Typed models of params.yaml, the one source of every stage's parameters.

Loading rejects unknown keys and bad values; the message names the file and
the dotted key path, e.g. ``params.yaml: generate.resolution: ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPLITS = ("train", "val", "test")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitFractions(StrictModel):
    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:g}")
        return self


class GenerateParams(StrictModel):
    """Synthetic scene generation (the embedded default dataset)."""

    seed: int = Field(0, ge=0)
    num_scenes: int = Field(2000, ge=1)
    resolution: int = Field(64, ge=16, le=256)
    splits: SplitFractions = SplitFractions()
    min_objects: int = Field(1, ge=1, le=6)
    max_objects: int = Field(6, ge=1, le=6)
    samples_per_shard: int = Field(256, ge=1)
    workers: int = Field(2, ge=1, description="Processes used to render; results do not depend on it.")

    @model_validator(mode="after")
    def _objects_range(self) -> GenerateParams:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"min_objects ({self.min_objects}) must not exceed max_objects ({self.max_objects})"
            )
        return self


LabelModality = Literal["depth", "normal", "semseg", "instance", "boxes"]


class LabelParams(StrictModel):
    """Pseudo-labeling: which labeler produces each label modality."""

    labelers: dict[LabelModality, str] = Field(
        default_factory=lambda: {
            "depth": "oracle",
            "normal": "oracle",
            "semseg": "oracle",
            "instance": "oracle",
            "boxes": "oracle",
        }
    )
    batch_size: int = Field(64, ge=1)


class ValidateParams(StrictModel):
    """Validation policy shared by the raw and labeled suites."""

    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    caption_min_chars: int = Field(1, ge=1)
    caption_max_chars: int = Field(600, ge=1)
    normal_tolerance: float = Field(1e-3, gt=0, description="Allowed | |n| - 1 | per pixel.")
    max_examples: int = Field(10, ge=1, description="Failing sample ids listed per rule.")


class MetricBounds(StrictModel):
    """Bounds a metric must meet; either side may be open."""

    min: float | None = None
    max: float | None = None


class RegistryParams(StrictModel):
    """Promotion gates of the model registry."""

    thresholds: dict[str, MetricBounds] = Field(
        default_factory=dict, description="metric -> bounds, checked when promoting to staging or production"
    )
    compare_metric: str | None = Field(
        None, description="metric a new production version must not be worse on than the current one"
    )
    higher_is_better: bool = True


class Params(StrictModel):
    """All of params.yaml."""

    generate: GenerateParams = GenerateParams()
    label: LabelParams = LabelParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    registry: RegistryParams = RegistryParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ParamsError(ValueError):
    """params.yaml is missing, malformed or has a bad value."""


def _format_errors(path: Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        detail = e["msg"]
        if e["type"] == "extra_forbidden":
            detail = "unknown key"
        elif "input" in e and not isinstance(e["input"], dict):
            detail += f" (got {e['input']!r})"
        lines.append(f"{path}: {loc}: {detail}")
    return "\n".join(lines)


def parse_params(data: dict, source: Path | str = "params.yaml") -> Params:
    """Validate a params mapping; errors name ``source`` and the dotted key."""
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ParamsError(_format_errors(Path(source), err)) from None


def load_params(path: Path | str = "params.yaml") -> Params:
    """Load and validate params.yaml."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return parse_params(data, path)


def dump_params(params: Params) -> dict:
    """Params as the plain mapping params.yaml holds."""
    return params.model_dump(by_alias=True, mode="json")
