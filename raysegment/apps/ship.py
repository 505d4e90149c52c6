"""What `raysegment compare --registry` ships: each target's judge's pick, registered as a version of
the target's domain and handed to the one promotion policy.

The source model is registered once under its own domain; the pick is stored as a delta on it,
with the study's evidence (every label-free candidate's score and why the pick won) in its
lineage, and a run config whose data section names the target's images, so the policy and later
promotions score it on the same held-back images. With no production model for the domain, the
pick must beat the model it was adapted from (the source) by the study's judge; with one, it must
beat production, both scored on the pick's held-back images (`promotion.held_back_scores`).
A pick that is the unadapted source itself therefore stays `candidate`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from raysegment.apps.study import TargetRun
from raysegment.apps.study_report import RESCALED, SOURCE
from raysegment.config import LABEL_FREE_METHODS, Judge, RunConfig
from raysegment.data import open_split
from raysegment.engine.estimate import Estimate
from raysegment.engine.signature import version_signatures
from raysegment.models.io import ModelMeta
from raysegment.registry import Registry
from raysegment.registry.audit import Decision
from raysegment.registry.intake import estimate_as_metrics, register_source
from raysegment.registry.promotion import PRODUCTION, Measured, promote_if_better, promote_version


def pick_config(run: TargetRun, method: str, judge: Judge, resize: Any) -> RunConfig:
    """The pick's run config: the target's study config at the pick's scale, judged by `judge` (the
    unadapted source trained nothing: its config says `finetune` on labelled data, never read)."""
    base = run.study.base
    label_free = method in LABEL_FREE_METHODS
    return base.model_copy(
        update={
            "data": base.data.model_copy(update={"domain": run.domain, "resize": resize, "unlabelled": label_free}),
            "adapt": base.adapt.model_copy(update={"method": method if label_free else "finetune", "judge": judge}),
        }
    )


def method_of(run: TargetRun, candidate: str) -> str:
    """The adaptation method behind a study candidate (`source` for the unadapted model)."""
    if candidate in (SOURCE, RESCALED):
        return "source"
    return next(method for name, method, _ in run.study.label_free if name == candidate)


def ship_pick(
    registry: Registry,
    run: TargetRun,
    source_folder: Path,
    meta: ModelMeta,
    evidence: Path,
    log: Callable[[str], Any] = print,
) -> Decision:
    """Register `run`'s judge's pick under its target domain and apply the promotion policy."""
    report, base = run.report, run.study.base
    source_data = base.adapt.source_root or base.data.root
    source_layout = base.adapt.source_layout or base.data.layout
    source_domain = base.adapt.source_domain or ""
    source_ref = register_source(registry, source_folder, source_data, source_domain, source_layout, log=log)
    pick = report.proxy_choice
    candidate = next(c for c in run.judged if c.name == pick)
    judge: Judge = "labels" if report.canary_miou else "proxy"
    scores = report.canary_miou or {c: p["score"] for c, p in report.proxy.items()}
    method = method_of(run, pick)
    found = report.estimate.get(pick)
    cfg = pick_config(run, method, judge, candidate.resize)
    d = cfg.data
    train_images = open_split(d.root, run.domain, d.train_split, d.layout, unlabelled=True)
    version = registry.register(
        run.domain,
        candidate.model,
        meta.model_copy(update={"resize": candidate.resize, "metrics": {}}),
        {
            "score": scores[pick],
            "source_score": scores[SOURCE],
            **estimate_as_metrics(Estimate(**found) if found else None),
        },
        cfg.model_dump(mode="json"),
        parent=source_ref,
        lineage={
            "method": method,
            "target_labels": 0,
            "judge": judge,
            "study": str(evidence),
            "study_candidate": pick,
            "study_scores": scores,
            "study_reason": report.proxy_reason,
        },
        signatures=version_signatures(
            candidate.model, train_images, candidate.resize, (source_ref, run.study.source_model)
        ),
    )
    why = f"study {evidence}: {report.proxy_reason}"
    if registry.aliases(run.domain).get(PRODUCTION) is None:
        measured = Measured(scores[pick], scores[SOURCE], judge, source_ref)
        decision = promote_if_better(registry, run.domain, version, measured, evidence=why)
    else:
        decision = promote_version(registry, f"{run.domain}@{version}", evidence=why)
    alias = PRODUCTION if decision.promoted else "candidate"
    log(f"[registry] {run.domain}@{version} ({pick}) is {alias}: {decision.reason}")
    return decision
