"""Lineage as a graph walk over run inputs/outputs and model-version references.

Edges always point the way data flows: artifact -> run (consumed), run ->
artifact (produced), artifact -> model version (checkpoint, tokenizer,
evaluation). ``upstream`` walks them backwards from the start, ``downstream``
forwards.
"""

from __future__ import annotations

from collections import deque

from sqlalchemy import select
from sqlalchemy.orm import Session

from fourm.registry.entities import LineageGraph, LineageNode
from fourm.registry.models import (
    Artifact,
    ModelVersion,
    ModelVersionTokenizer,
    Run,
    RunInput,
    RunOutput,
)


def _artifact_node(a: Artifact, depth: int) -> LineageNode:
    return LineageNode(f"artifact:{a.id}", a.kind, f"{a.kind} {a.name} ({a.uri})", a.sha256, depth)


def _run_node(r: Run, depth: int) -> LineageNode:
    commit = (r.git_commit or "no-git")[:10] + ("+dirty" if r.git_dirty else "")
    return LineageNode(
        f"run:{r.id}", "run", f"run {r.id} {r.stage} [{r.status}] @{commit}", r.params_sha256, depth
    )


def _version_node(mv: ModelVersion, depth: int) -> LineageNode:
    return LineageNode(
        f"model:{mv.model.name}:{mv.version}",
        "model version",
        f"model {mv.model.name}:{mv.version} [{mv.stage}]",
        None,
        depth,
    )


def _version_artifacts(s: Session, mv: ModelVersion) -> list[tuple[int, str]]:
    refs = [(mv.checkpoint_artifact_id, "checkpoint")]
    refs += [
        (aid, "tokenizer")
        for aid in s.scalars(select(ModelVersionTokenizer.artifact_id).filter_by(model_version_id=mv.id))
    ]
    if mv.evaluation_artifact_id:
        refs.append((mv.evaluation_artifact_id, "evaluation"))
    return refs


def _versions_using(s: Session, artifact_id: int) -> list[tuple[ModelVersion, str]]:
    out = [
        (mv, "checkpoint")
        for mv in s.scalars(select(ModelVersion).filter_by(checkpoint_artifact_id=artifact_id))
    ]
    out += [
        (mv, "evaluation")
        for mv in s.scalars(select(ModelVersion).filter_by(evaluation_artifact_id=artifact_id))
    ]
    out += [
        (s.get(ModelVersion, mvt.model_version_id), "tokenizer")
        for mvt in s.scalars(select(ModelVersionTokenizer).filter_by(artifact_id=artifact_id))
    ]
    return out


def walk(s: Session, start: LineageNode, direction: str, max_depth: int) -> LineageGraph:
    """Breadth-first walk from ``start`` (an artifact or model-version node)."""
    graph = LineageGraph(root=start.key, direction=direction)
    graph.nodes[start.key] = start
    queue = deque([start])
    while queue:
        node = queue.popleft()
        if node.depth >= max_depth:
            continue
        for neighbour, edge in _neighbours(s, node, direction):
            if edge not in graph.edges:
                graph.edges.append(edge)
            if neighbour.key not in graph.nodes:
                graph.nodes[neighbour.key] = neighbour
                queue.append(neighbour)
    return graph


def _neighbours(
    s: Session, node: LineageNode, direction: str
) -> list[tuple[LineageNode, tuple[str, str, str]]]:
    kind, _, ident = node.key.partition(":")
    d = node.depth + 1
    out: list[tuple[LineageNode, tuple[str, str, str]]] = []
    if kind == "model":
        name, _, version = ident.rpartition(":")
        mv = s.scalars(
            select(ModelVersion)
            .join(ModelVersion.model)
            .filter_by(name=name)
            .filter(ModelVersion.version == int(version))
        ).one()
        if direction == "upstream":
            for aid, rel in _version_artifacts(s, mv):
                a = _artifact_node(s.get(Artifact, aid), d)
                out.append((a, (a.key, node.key, rel)))
            if mv.run_id:
                r = _run_node(s.get(Run, mv.run_id), d)
                out.append((r, (r.key, node.key, "registered")))
    elif kind == "artifact":
        aid = int(ident)
        if direction == "upstream":
            for r in s.scalars(select(Run).join(RunOutput).filter(RunOutput.artifact_id == aid)):
                rn = _run_node(r, d)
                out.append((rn, (rn.key, node.key, "produced")))
        else:
            for r in s.scalars(select(Run).join(RunInput).filter(RunInput.artifact_id == aid)):
                rn = _run_node(r, d)
                out.append((rn, (node.key, rn.key, "consumed by")))
            for mv, rel in _versions_using(s, aid):
                vn = _version_node(mv, d)
                out.append((vn, (node.key, vn.key, rel)))
    elif kind == "run":
        rid = int(ident)
        if direction == "upstream":
            for a in s.scalars(select(Artifact).join(RunInput).filter(RunInput.run_id == rid)):
                an = _artifact_node(a, d)
                out.append((an, (an.key, node.key, "consumed by")))
        else:
            for a in s.scalars(select(Artifact).join(RunOutput).filter(RunOutput.run_id == rid)):
                an = _artifact_node(a, d)
                out.append((an, (node.key, an.key, "produced")))
            for mv in s.scalars(select(ModelVersion).filter_by(run_id=rid)):
                vn = _version_node(mv, d)
                out.append((vn, (node.key, vn.key, "registered")))
    return out


def render(graph: LineageGraph, fmt: str) -> str:
    """The graph as indented text, Graphviz dot, or a Mermaid flowchart."""
    if fmt == "dot":
        lines = ["digraph lineage {", "  rankdir=LR;"]
        lines += [f'  "{n.key}" [label="{_label(n)}"];' for n in graph.nodes.values()]
        lines += [f'  "{a}" -> "{b}" [label="{rel}"];' for a, b, rel in graph.edges]
        return "\n".join([*lines, "}"])
    if fmt == "mermaid":
        ids = {k: f"n{i}" for i, k in enumerate(graph.nodes)}
        lines = ["flowchart LR"]
        lines += [f'  {ids[n.key]}["{_label(n)}"]' for n in graph.nodes.values()]
        lines += [f"  {ids[a]} -->|{rel}| {ids[b]}" for a, b, rel in graph.edges]
        return "\n".join(lines)
    lines = [f"{graph.direction} lineage of {graph.root}"]
    for n in sorted(graph.nodes.values(), key=lambda n: (n.depth, n.key)):
        sha = f"  sha256 {n.sha256}" if n.sha256 and n.kind != "run" else ""
        lines.append(f"{'  ' * n.depth}- {n.label}{sha}")
    return "\n".join(lines)


def _label(n: LineageNode) -> str:
    sha = f"\\n{n.sha256[:12]}" if n.sha256 and n.kind != "run" else ""
    return (n.label + sha).replace('"', "'")
