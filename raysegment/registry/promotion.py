"""Do no harm, in one place: the two doors by which a registry version becomes a domain's `production`.

- `promote_if_better`, the policy (and `force_production`, the judge overridden on the record):
  every path that puts a new model live goes through it (Tune winners, `compare --registry` picks,
  `registry add`, `raysegment registry promote`, closed-loop turns, INT8 exports, serving's
  online-AdaBN snapshots).
- `rollback`, its own audited door: production moves back to the version that held it before,
  one that this policy promoted then; recorded as a rollback with who asked.

Nothing else moves `production` (`Registry.set_alias` is the low-level move both use).

A candidate becomes `production` only when it beats the domain's current production model (or,
for a domain with none yet, the model it was adapted from) by the domain's judge on held-back
images: target val labels where they exist, the unsupervised proxy otherwise. Otherwise it gets
the alias `candidate` and the reason is recorded. `force=True` overrides the judge and is recorded
as forced, with who forced it. Every decision is appended to the domain's audit history
(`Registry.history`).

A do-no-harm floor backs the judge: a candidate whose estimated target mIoU (`intake`, no labels)
has an upper bound below the incumbent's estimate is refused even when its judge's score wins,
because a label-free score can rise while the segmentation collapses (entropy minimisation does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import ValidationError

from raysegment.config import Judge, RunConfig
from raysegment.data import SegmentationDataset, open_split
from raysegment.engine.judge import judged_scores
from raysegment.engine.policy import beats
from raysegment.errors import RaySegmentError
from raysegment.registry.audit import AuditRecord, Decision, Retired, RolledBack
from raysegment.registry.manifest import ModelVersion, RegistryError
from raysegment.registry.versions import Registry

PRODUCTION = "production"
CANDIDATE = "candidate"


def judge(
    candidate_score: float, incumbent_score: float | None, judge_name: Judge, margin: float = 0.0
) -> tuple[bool, str]:
    """(wins, reason), by `engine.policy.beats`."""
    if incumbent_score is None:
        return True, "no model to beat"
    wins = beats(candidate_score, incumbent_score, judge_name, margin)
    if margin < 0:  # a compressed model against its own float parent
        relation = "is within" if wins else "falls more than"
        return wins, (
            f"{judge_name} score {100 * candidate_score:.2f} {relation} {-100 * margin:.2f} points of "
            f"{100 * incumbent_score:.2f}" + ("" if wins else " below it")
        )
    relation = "beats" if wins else "does not beat"
    return wins, (
        f"{judge_name} score {100 * candidate_score:.2f} {relation} {100 * incumbent_score:.2f}"
        + (f" by more than {100 * margin:.2f}" if margin else "")
    )


@dataclass(frozen=True)
class Measured:
    """What the judge measured on held-back images: the candidate's score and the incumbent's
    (None: no model to beat) by `judge`, the incumbent named by its ref. `margin`: by how much the
    candidate must win (negative: by how much a compressed model may lose to its own parent).
    No score or no judge: the judge could not run, and the candidate cannot win."""

    candidate: float | None
    incumbent: float | None
    judge: Judge | None
    incumbent_ref: str | None = None
    margin: float = 0.0


def promote_if_better(
    registry: Registry, domain: str, version: int, measured: Measured, evidence: str = "held-back images"
) -> Decision:
    """Apply the policy: `production` when the candidate wins by its judge (and clears the
    do-no-harm floor), else `candidate`; the decision and its reason enter the history."""
    m = measured
    if m.candidate is None or m.judge is None:
        wins, reason = False, "no held-back score: the judge could not run"
    else:
        wins, reason = judge(m.candidate, m.incumbent, m.judge, m.margin)
        below = floor_breach(registry, domain, version, m.incumbent_ref) if wins else None
        if below:
            wins, reason = False, f"{reason}, but {below}"
    decision = Decision(
        domain=domain,
        version=version,
        promoted=wins,
        judge=m.judge,
        candidate_score=m.candidate,
        incumbent_score=m.incumbent,
        incumbent=m.incumbent_ref,
        reason=reason,
        evidence=evidence,
    )
    return _record(registry, decision)


def force_production(registry: Registry, domain: str, version: int, actor: str, why: str | None = None) -> Decision:
    """Production without the judge, on the record: who forced it, and why."""
    if not actor:
        raise ValueError("a forced promotion records who forced it: pass actor")
    reason = f"forced by {actor}" + (f": {why}" if why else "")
    return _record(registry, Decision(domain=domain, version=version, promoted=True, reason=reason, forced_by=actor))


def _record(registry: Registry, decision: Decision) -> Decision:
    """Move the alias the decision says, with the decision in the history."""
    alias = PRODUCTION if decision.promoted else CANDIDATE
    registry.set_alias(decision.domain, decision.version, alias, record=AuditRecord(decision=decision))
    if decision.promoted:
        registry.drop_alias(decision.domain, CANDIDATE, decision.version)
    return decision


def floor_breach(registry: Registry, domain: str, version: int, incumbent: str | None) -> str | None:
    """Why the candidate falls below the do-no-harm floor (its estimate's upper bound under the
    incumbent's estimated mIoU), or None: within it, or either has no estimate."""
    if incumbent is None:
        return None
    mine = registry.get_entry(domain, version).metrics
    theirs = registry.resolve(incumbent).metrics
    high, floor = mine.get("estimated_miou_high"), theirs.get("estimated_miou")
    if high is None or floor is None or high >= floor:
        return None
    return (
        f"its estimated mIoU (at most {100 * high:.1f}) is below {incumbent}'s estimate "
        f"{100 * floor:.1f}: refused by the do-no-harm floor"
    )


def retire(registry: Registry, domain: str, version: int, reason: str) -> None:
    """A candidate that lost (or could not be judged) stops being `candidate`; the version stays
    registered, and the reason enters the history."""
    registry.drop_alias(domain, CANDIDATE, version, record=AuditRecord(retired=Retired(version=version, reason=reason)))


def rollback(registry: Registry, domain: str, actor: str | None = None) -> int:
    """Move `production` back to the version that held it before the current one took over; returns
    it. Repeated rollbacks walk further back through the promotions (rollbacks are not promotions)."""
    current = registry.aliases(domain).get(PRODUCTION)
    promoted = [
        r.version
        for r in registry.history(domain)
        if r.alias == PRODUCTION and r.version is not None and not r.rollback
    ]
    if current not in promoted:
        raise RegistryError(f"{domain}: production {current} has no promotion in the history to roll back")
    position = len(promoted) - 1 - promoted[::-1].index(current)
    if position == 0:
        raise RegistryError(f"{domain}: {domain}@{current} was the first production version; nothing to roll back to")
    previous = promoted[position - 1]
    registry.set_alias(domain, previous, PRODUCTION, record=AuditRecord(rollback=RolledBack(from_=current, by=actor)))
    return previous


def held_back(candidate: ModelVersion) -> tuple[RunConfig, Judge, SegmentationDataset | None] | None:
    """The run config, judge and held-back images (its run config's val split) a candidate is
    scored on; None without a usable run config, no images when its val split cannot be opened."""
    try:
        cfg = RunConfig.model_validate(candidate.config)
    except ValidationError:
        return None
    judge_name = candidate.lineage.judge or cfg.judge
    d = cfg.data
    try:
        val = open_split(d.root, candidate.domain, d.val_split, d.layout, unlabelled=judge_name == "proxy")
        return cfg, judge_name, val.labelled() if judge_name == "labels" else val
    except RaySegmentError:
        return cfg, judge_name, None


def held_back_scores(
    registry: Registry, candidate: ModelVersion
) -> tuple[float | None, float | None, Judge, str | None]:
    """Score a registered candidate and the domain's production model on the candidate's held-back
    images by its judge: (candidate, incumbent, judge, incumbent ref). A candidate without a usable
    run config cannot be judged: its score is None."""
    found = held_back(candidate)
    if found is None:
        return None, None, "proxy", None
    cfg, judge_name, val = found
    production = registry.aliases(candidate.domain).get(PRODUCTION)
    incumbent = f"{candidate.domain}@{production}" if production not in (None, candidate.version) else None
    if val is None:
        return None, None, judge_name, incumbent
    model, _, _ = registry.load(candidate.ref)
    reference = registry.load(incumbent)[0] if incumbent else model

    def score(m: torch.nn.Module) -> float:
        return judged_scores(m, val, cfg, judge_name, reference)["score"]

    return score(model), (score(reference) if incumbent else None), judge_name, incumbent


def promote_compressed(
    registry: Registry,
    candidate: ModelVersion,
    parent: ModelVersion,
    compressed: torch.nn.Module,
    parent_model: torch.nn.Module,
    max_drop: float,
) -> Decision:
    """A compressed version (INT8) of `parent`, run as `compressed`, ships when it is not measurably
    worse than its parent: within `max_drop` points of it by the parent's judge on the held-back
    images (the one policy with a negative margin). It replaces only its own parent: when the parent
    is not production, it becomes `candidate` unjudged (the policy judges it when it is promoted)."""
    if registry.aliases(parent.domain).get(PRODUCTION) != parent.version:  # nothing to judge against yet
        reason = f"its float parent {parent.ref} is not production: promote the parent first"
        decision = Decision(
            domain=candidate.domain, version=candidate.version, promoted=False, incumbent=parent.ref, reason=reason
        )
        registry.set_alias(candidate.domain, candidate.version, CANDIDATE, record=AuditRecord(decision=decision))
        return decision
    found = held_back(parent)
    if found is None or found[2] is None:
        return promote_if_better(registry, candidate.domain, candidate.version, Measured(None, None, None, parent.ref))
    cfg, judge_name, val = found[0], found[1], found[2]
    score, parent_score = (
        judged_scores(m, val, cfg, judge_name, parent_model)["score"] for m in (compressed, parent_model)
    )
    measured = Measured(score, parent_score, judge_name, parent.ref, margin=-max_drop / 100)
    return promote_if_better(registry, candidate.domain, candidate.version, measured)


def promote_version(
    registry: Registry,
    ref: str,
    force: bool = False,
    actor: str | None = None,
    why: str | None = None,
    evidence: str = "held-back images",
) -> Decision:
    """`raysegment registry promote DOMAIN@VERSION` (and `POST /v1/domains/{d}/promote`): judge on
    held-back images, then apply the policy; `force` skips the judge and records `actor` and `why`."""
    entry = registry.resolve(ref)
    if force:
        return force_production(registry, entry.domain, entry.version, actor or "", why)
    candidate, incumbent_score, judge_name, incumbent = held_back_scores(registry, entry)
    measured = Measured(candidate, incumbent_score, judge_name, incumbent)
    return promote_if_better(registry, entry.domain, entry.version, measured, evidence=evidence)


SNAPSHOT_METHOD = "adabn_online"  # the lineage method of versions stored from serving's online AdaBN


def register_snapshot(
    registry: Registry, parent: ModelVersion, statistics: dict[str, torch.Tensor], images: int
) -> Decision:
    """Store online-adapted BatchNorm statistics of `parent` as a new version and hand it to the
    policy. A snapshot is registered with its own (empty) metrics, never its parent's, and has no
    held-back score here, so it becomes `candidate`: production only by `promote_version`'s judge."""
    model, meta, _ = registry.load(parent.ref)
    model.load_state_dict({**model.state_dict(), **statistics})
    version = registry.register(
        parent.domain,
        model,
        meta,
        {},
        parent.config,
        parent=parent.ref,
        lineage={"method": SNAPSHOT_METHOD, "target_labels": 0, "images": images},
    )
    return promote_if_better(registry, parent.domain, version, Measured(None, None, "proxy", parent.ref))


def prune_snapshots(registry: Registry, domain: str, keep: int) -> list[int]:
    """Remove the oldest AdaBN snapshots of `domain` beyond `keep`; aliased ones (production,
    candidate) and bases of other versions are never removed. Returns the removed versions."""
    aliased = set(registry.aliases(domain).values())
    used_as_base = {e.base.version for e in registry.entries() if e.base and e.base.domain == domain}
    spare = [
        e.version
        for e in registry.entries(domain)
        if e.version not in aliased and e.version not in used_as_base and e.lineage.method == SNAPSHOT_METHOD
    ]
    doomed = spare[: max(len(spare) - keep, 0)]
    for version in doomed:
        registry.remove(domain, version)
    return doomed
