"""The local launcher: ``torchrun --standalone`` with N processes of ``fourm.train.worker``.

Implements the launcher contract of DESIGN.md: ``launch(spec) -> handle`` with
``wait``, ``logs`` and ``cancel``. The workers' output is streamed to ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


class LaunchError(RuntimeError):
    """A launched job failed; the message carries its exit status and last lines."""


@dataclass(frozen=True)
class TrainSpec:
    """A training job: the worker's arguments and how many processes run it."""

    args: Sequence[str]
    processes: int = 1
    env: dict[str, str] = field(default_factory=dict)


def torchrun_command(spec: TrainSpec) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={spec.processes}",
        "-m",
        "fourm.train.worker",
        *spec.args,
    ]


class LocalHandle:
    def __init__(self, proc: subprocess.Popen[str]):
        self.proc = proc
        self.tail: list[str] = []

    def logs(self) -> Iterator[str]:
        """The job's output lines as they come (also kept: the last 40 for error messages)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.tail = [*self.tail[-39:], line.rstrip("\n")]
            yield line

    def wait(self) -> int:
        """Stream the output to stderr until the job ends; raise LaunchError if it failed."""
        for line in self.logs():
            sys.stderr.write(line)
            sys.stderr.flush()
        code = self.proc.wait()
        if code != 0:
            detail = "\n".join(self.tail[-15:])
            raise LaunchError(f"torchrun exited with status {code}; last lines:\n{detail}")
        return code

    def cancel(self) -> None:
        """Stop every process of the job (torchrun forwards SIGTERM to its workers)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class LocalLauncher:
    name = "local"

    def launch(self, spec: TrainSpec) -> LocalHandle:
        env = {
            **os.environ,
            **spec.env,
            "OMP_NUM_THREADS": os.environ.get(
                "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.processes))
            ),
        }
        proc = subprocess.Popen(
            torchrun_command(spec),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        return LocalHandle(proc)
