"""Promotion gates: metric thresholds, and not worse than production on the same evaluation."""

from __future__ import annotations

from typing import Any

from fourm.params import RegistryParams
from fourm.registry.entities import VersionInfo


def _metric(version: VersionInfo, name: str) -> float | None:
    value = version.metrics.get(name)
    return float(value) if isinstance(value, int | float) else None


def evaluate_gates(
    gates: RegistryParams, to_stage: str, candidate: VersionInfo, production: VersionInfo | None
) -> dict[str, Any]:
    """Every gate's verdict: ``{gate: {passed, message, ...values}}``. Only staging and
    production promotions are gated; moving to ``none`` or ``archived`` always passes."""
    results: dict[str, Any] = {}
    if to_stage not in ("staging", "production"):
        return results
    for name, bounds in sorted(gates.thresholds.items()):
        value = _metric(candidate, name)
        ok = (
            value is not None
            and (bounds.min is None or value >= bounds.min)
            and (bounds.max is None or value <= bounds.max)
        )
        want = " and ".join(
            f"{op} {b:g}" for op, b in ((">=", bounds.min), ("<=", bounds.max)) if b is not None
        )
        results[f"threshold:{name}"] = {
            "passed": ok,
            "value": value,
            "min": bounds.min,
            "max": bounds.max,
            "message": f"{name} = {value if value is not None else 'missing'} (required {want or 'present'})",
        }
    metric = gates.compare_metric
    if to_stage == "production" and metric and production is not None and production.ref != candidate.ref:
        results[f"vs-production:{metric}"] = _compare(metric, gates.higher_is_better, candidate, production)
    return results


def _compare(metric: str, higher_is_better: bool, candidate: VersionInfo, production: VersionInfo) -> dict:
    new, cur = _metric(candidate, metric), _metric(production, metric)
    same_eval = (
        candidate.evaluation is not None
        and production.evaluation is not None
        and candidate.evaluation.sha256 == production.evaluation.sha256
    )
    verdict: dict[str, Any] = {"candidate": new, "production": cur, "production_version": production.version}
    if not same_eval:
        verdict.update(
            passed=False,
            message=(
                f"{metric}: {candidate.ref} and production {production.ref} were not evaluated on the same "
                "evaluation artifact, so they cannot be compared"
            ),
        )
    elif new is None or cur is None:
        verdict.update(
            passed=False, message=f"{metric}: missing on {candidate.ref if new is None else production.ref}"
        )
    else:
        better_or_equal = new >= cur if higher_is_better else new <= cur
        direction = "higher" if higher_is_better else "lower"
        verdict.update(
            passed=better_or_equal,
            message=(
                f"{metric} {new:g} on {candidate.ref} vs {cur:g} on production {production.ref} "
                f"({direction} is better)"
            ),
        )
    return verdict
