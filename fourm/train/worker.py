"""One training process: what ``fourm train`` runs in-process and torchrun runs per rank.

    python -m fourm.train.worker [--params params.yaml | --pretrain-json FILE | --pretrain-inline JSON] \\
        --tokens data/tokens|s3://... --out models/pretrain \\
        --reports reports/pretrain [--no-resume] [--stop-after N] [--publish-outputs s3://...]

``--publish-outputs`` (rank 0, after success) uploads the model and reports, so a caller
on another machine (the Kubernetes launcher) can fetch them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fourm.data.token_set import TokenSet
from fourm.params import PretrainParams, load_params
from fourm.progress import StepProgress
from fourm.settings import Settings, get_settings
from fourm.tracking import NullTracker, make_tracker
from fourm.train.distributed import init_distributed, shutdown_distributed
from fourm.train.stage import PretrainReport, checkpoint_store, run_pretrain


def pretrain_process(
    params: PretrainParams,
    tokens: str,
    out_dir: Path,
    reports_dir: Path,
    *,
    resume: bool = True,
    stop_after: int | None = None,
    settings: Settings | None = None,
    publish_outputs: str | None = None,
) -> PretrainReport:
    """Set up this process (distributed if under torchrun), train, write outputs on rank 0."""
    settings = settings or get_settings()
    info = init_distributed()
    try:
        store = None
        if str(tokens).startswith("s3://") or params.upload_checkpoints or publish_outputs:
            from fourm.storage.object_store import ObjectStore

            store = ObjectStore.from_settings(settings)
        token_set = TokenSet.open(tokens, store if str(tokens).startswith("s3://") else None)
        bucket = settings.buckets.checkpoints if params.upload_checkpoints else None
        checkpoints = checkpoint_store(params, token_set, settings.home_dir, bucket, store, info.world_size)
        tracker = (
            make_tracker(
                settings, "fourm-pretrain", f"pretrain-{params.model.size}", params.model_dump(mode="json")
            )
            if info.is_main
            else NullTracker()
        )
        bar = StepProgress(params.steps, f"pretrain {params.model.size}") if info.is_main else None

        def progress(step: int, total: int, record: dict[str, float]) -> None:
            if bar is not None:
                bar.update(step, f"loss {record['loss']:.3f} · {record['tokens_per_s']:,.0f} tok/s")

        try:
            report = run_pretrain(
                params,
                token_set,
                out_dir,
                reports_dir,
                checkpoints,
                info,
                resume=resume,
                tracker=tracker,
                progress=progress,
                store_factory=(lambda: ObjectStore.from_settings(get_settings())) if store else None,
                stop_after=stop_after,
            )
            if publish_outputs and info.is_main:
                from fourm.train.outputs import publish_outputs as publish

                publish(store, publish_outputs, out_dir, reports_dir)
            return report
        finally:
            tracker.finish()
            if bar is not None:
                bar.close()
    finally:
        shutdown_distributed()


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fourm.train.worker", description=__doc__)
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params.yaml (its pretrain section)"
    )
    parser.add_argument(
        "--pretrain-json", type=Path, default=None, help="the pretrain section as JSON instead"
    )
    parser.add_argument("--pretrain-inline", default=None, help="the pretrain section as a JSON string")
    parser.add_argument("--tokens", default="data/tokens")
    parser.add_argument("--publish-outputs", default=None, help="s3:// prefix for model and reports")
    parser.add_argument("--out", type=Path, default=Path("models/pretrain"))
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--reports", type=Path, default=Path("reports/pretrain"))
    return parser


def params_from_args(args: argparse.Namespace) -> PretrainParams:
    """The pretrain params the arguments name (inline JSON, a JSON file or params.yaml)."""
    if args.pretrain_inline is not None:
        return PretrainParams.model_validate_json(args.pretrain_inline)
    if args.pretrain_json is not None:
        return PretrainParams.model_validate_json(args.pretrain_json.read_text())
    return load_params(args.params).pretrain


def main(argv: list[str] | None = None) -> int:
    args = argument_parser().parse_args(argv)
    pretrain_process(
        params_from_args(args),
        args.tokens,
        args.out,
        args.reports,
        resume=not args.no_resume,
        stop_after=args.stop_after,
        publish_outputs=args.publish_outputs,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
