"""Prefect retry conditions: retry what the network or a server broke, never bad data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def retry_only_on(*transient: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A ``retry_condition_fn`` that retries a failed task only when it raised one of ``transient``."""

    def condition(task: Any, task_run: Any, state: Any) -> bool:  # noqa: ANN401 (Prefect's hook signature)
        try:
            state.result()
        except transient:
            return True
        except Exception:
            return False
        return False

    return condition
