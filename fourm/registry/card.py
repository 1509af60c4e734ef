"""Model cards in markdown, built from registry entities only."""

from __future__ import annotations

import json

from fourm.registry.convert import flatten
from fourm.registry.entities import ArtifactInfo, PromotionInfo, RunInfo, VersionInfo

INTENDED_USE = (
    "An any-to-any multimodal model in the style of 4M (Mizrahi et al., NeurIPS 2023): given any "
    "subset of modalities of an image (RGB, depth, normals, segmentation, boxes, caption) as tokens, "
    "it predicts the others. Trained and evaluated only on the data listed below; performance on "
    "other image distributions is unknown."
)


def model_card(
    version: VersionInfo,
    run: RunInfo | None,
    upstream: list[ArtifactInfo],
    history: list[PromotionInfo],
) -> str:
    lines = [
        f"# Model card: {version.ref}",
        "",
        f"- stage: **{version.stage}**"
        + (f", aliases: {', '.join('@' + a for a in version.aliases)}" if version.aliases else ""),
        f"- registered: {version.created_at:%Y-%m-%d %H:%M UTC}",
        f"- checkpoint: `{version.checkpoint.uri}` (sha256 `{version.checkpoint.sha256}`)",
    ]
    if version.description:
        lines += ["", version.description]
    lines += ["", "## Intended use", "", str(version.tags.get("intended_use", INTENDED_USE))]

    lines += ["", "## Data lineage", "", "| kind | name | uri | sha256 |", "|---|---|---|---|"]
    lines += [f"| {a.kind} | {a.name} | `{a.uri}` | `{a.sha256[:16]}…` |" for a in upstream]
    if not upstream:
        lines.append("| – | no recorded inputs | | |")

    lines += ["", "## Training parameters", ""]
    if run is not None:
        commit = run.git_commit or "unknown"
        lines.append(
            f"Run {run.id} ({run.stage}), code commit `{commit}`{' (dirty)' if run.git_dirty else ''}."
        )
        lines += ["", "```json", json.dumps(run.params, indent=2, sort_keys=True), "```"]
    else:
        lines.append("No training run recorded.")

    baselines = (
        flatten(version.metrics.get("baselines", {}))
        if isinstance(version.metrics.get("baselines"), dict)
        else {}
    )
    metrics = {k: v for k, v in flatten(version.metrics).items() if not k.startswith("baselines.")}
    lines += ["", "## Metrics", "", "| metric | value | trivial baseline |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {baselines.get(k, '–')} |" for k, v in sorted(metrics.items())]
    if version.evaluation:
        lines += [
            "",
            f"Evaluated on `{version.evaluation.uri}` (sha256 `{version.evaluation.sha256[:16]}…`).",
        ]

    lines += [
        "",
        "## Promotion history",
        "",
        "| when | version | from → to | by | reason | forced |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {e.at:%Y-%m-%d %H:%M} | {e.version} | {e.from_stage} → {e.to_stage} | {e.actor} "
        f"| {e.reason or ''} | {'yes' if e.forced else ''} |"
        for e in history
    ]
    return "\n".join(lines) + "\n"
