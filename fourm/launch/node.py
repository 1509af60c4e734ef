"""What each training pod runs: check the configuration, then torchrun for this node.

    python -m fourm.launch.node --nnodes 2 --nproc-per-node 8 \\
        --master-addr JOB-0.SERVICE --master-port 29400 -- <fourm.train.worker arguments>

The node rank is the pod's ``JOB_COMPLETION_INDEX`` (Kubernetes sets it in Indexed Job
pods). Rendezvous is torchrun's static one at pod 0, with no in-place restarts: when a
pod dies its peers' collectives fail and every pod exits, so the Job's retries restart
the whole group, which resumes from the latest checkpoint in S3. (torchrun's elastic
re-rendezvous with a replaced node did not complete in our tests with this torch.)

A configuration that cannot work (bad params, unreachable or incompatible token set)
exits with status 78 before torchrun starts; the Job's pod failure policy fails the Job
on it at once instead of retrying.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from pydantic import ValidationError

from fourm.launch.k8s_objects import CONFIG_ERROR_EXIT

# S3 answers that retrying will not change.
_CONFIG_S3_CODES = {
    "NoSuchKey",
    "NoSuchBucket",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
}


def preflight(worker_args: list[str]) -> str | None:
    """Why this training configuration cannot run, or None when it can."""
    from fourm.data.token_set import TokenSet
    from fourm.data.token_shards import TokenSetError
    from fourm.model.config import model_config
    from fourm.params import ParamsError
    from fourm.settings import get_settings
    from fourm.storage.object_store import ObjectStore, StorageError
    from fourm.train.data import IncompatibleError, check_compatible
    from fourm.train.worker import argument_parser, params_from_args

    try:
        args = argument_parser().parse_args(worker_args)
        params = params_from_args(args)
        store = ObjectStore.from_settings(get_settings()) if str(args.tokens).startswith("s3://") else None
        token_set = TokenSet.open(args.tokens, store)
        model = params.model
        check_compatible(token_set, model_config(model.size, model.inputs, model.targets))
    except SystemExit as exit_:  # argparse
        return f"bad worker arguments (status {exit_.code})"
    except (ValidationError, ParamsError, TokenSetError, IncompatibleError, FileNotFoundError) as err:
        return f"{type(err).__name__}: {err}"
    except StorageError as err:
        if err.code in _CONFIG_S3_CODES:
            return f"{type(err).__name__}: {err}"
        raise  # S3 unreachable or slow: transient, so the pod fails normally and the Job retries
    return None


def torchrun_args(args: argparse.Namespace, node_rank: int, worker_args: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={args.nnodes}", f"--nproc-per-node={args.nproc_per_node}",
        f"--node-rank={node_rank}", f"--master-addr={args.master_addr}",
        f"--master-port={args.master_port}", "--max-restarts=0",
        "-m", "fourm.train.worker", *worker_args,
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="fourm.launch.node", description=__doc__)
    parser.add_argument("--nnodes", type=int, required=True)
    parser.add_argument("--nproc-per-node", type=int, required=True)
    parser.add_argument("--master-addr", required=True)
    parser.add_argument("--master-port", type=int, default=29400)
    args = parser.parse_args(argv[:split])
    worker_args = argv[split + 1 :]
    node_rank = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    problem = preflight(worker_args)
    if problem:
        print(f"fourm: configuration error, not retrying: {problem}", file=sys.stderr, flush=True)
        return CONFIG_ERROR_EXIT
    print(
        f"fourm: node {node_rank} of {args.nnodes}, rendezvous {args.master_addr}:{args.master_port}",
        flush=True,
    )
    proc = subprocess.Popen(torchrun_args(args, node_rank, worker_args))
    # Kubernetes stops a pod with SIGTERM: pass it on so torchrun stops its workers.
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    return proc.wait()


if __name__ == "__main__":
    sys.exit(main())
