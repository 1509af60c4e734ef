"""What every ``fourm`` command module shares: consoles, common options, error handling, reports.

Known failures print one clear line and exit non-zero (75 where a retry may help);
they never show a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from fourm.params import ParamsError

out = Console()
err = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])
ParamsOpt = Annotated[Path, typer.Option("--params", help="params.yaml to read.")]


def _known_errors() -> tuple[type[BaseException], ...]:
    from fourm.data.codecs import DecodeError
    from fourm.data.format import DatasetError
    from fourm.data.ingest import IngestError
    from fourm.data.token_shards import TokenSetError
    from fourm.evaluation.data import EvaluationDataError
    from fourm.generation_io import InputError
    from fourm.inference import InferenceError
    from fourm.labelers.base import LabelerError
    from fourm.launch.local import LaunchError
    from fourm.modalities import ModalityError
    from fourm.model.generation_types import GenerationError
    from fourm.registry.errors import RegistryError
    from fourm.reproduce import ReproduceError
    from fourm.run_workspace import RunWorkspaceError
    from fourm.services import ServiceError
    from fourm.storage.object_store import StorageError
    from fourm.tokenizers.base import TokenizerError
    from fourm.train.checkpoint import CheckpointError
    from fourm.train.data import IncompatibleError
    from fourm.train.loop import TrainingDiverged

    # OSError last: a missing or unwritable file the user named is bad input, not a bug.
    return (
        ParamsError,
        RunWorkspaceError,
        ReproduceError,
        DatasetError,
        DecodeError,
        LabelerError,
        StorageError,
        ServiceError,
        RegistryError,
        TokenizerError,
        TokenSetError,
        CheckpointError,
        IncompatibleError,
        TrainingDiverged,
        LaunchError,
        ModalityError,
        GenerationError,
        InferenceError,
        InputError,
        EvaluationDataError,
        IngestError,
        OSError,
    )


TRANSIENT_EXIT = 75  # EX_TEMPFAIL: S3 or a service did not answer; the pipeline retries such a stage


def _is_transient(error: BaseException) -> bool:
    from fourm.services import ServiceError
    from fourm.storage.object_store import StorageError

    return isinstance(error, ServiceError) or (isinstance(error, StorageError) and error.transient)


def friendly_errors(fn: F) -> F:
    """Turn the project's known errors into one red line and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _known_errors() as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(TRANSIENT_EXIT if _is_transient(e) else 1) from None

    return wrapper  # type: ignore[return-value]


def write_report(path: Path | None, report: dict[str, Any]) -> None:
    if path is not None:
        from fourm.io import atomic_write_json, without_timings

        atomic_write_json(path, without_timings(report))


PartOpt = Annotated[
    str | None,
    typer.Option(
        "--part", help="I/N: only the I-th of N ranges of shards, for a later full run to take over."
    ),
]


def parse_part(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected INDEX/COUNT, e.g. 0/4", param_hint="--part") from None
    if not 0 <= index < count:
        raise typer.BadParameter(f"{text!r}: INDEX must be in 0..COUNT-1", param_hint="--part")
    return index, count


RawOpt = Annotated[Path, typer.Option("--raw", help="Raw dataset directory.")]
LabelsOpt = Annotated[Path, typer.Option("--labels", help="Label set directory.")]
AcceptedOpt = Annotated[
    Path, typer.Option("--accepted", help="Manifest of the samples that passed label validation.")
]
TokenizersOpt = Annotated[Path, typer.Option("--tokenizers", help="Root of the trained tokenizers.")]


def dataset_inputs(raw: Path, labels: Path, accepted: Path) -> Any:
    from fourm.data.samples import DatasetInputs

    return DatasetInputs(raw, labels, accepted)
