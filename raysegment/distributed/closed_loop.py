"""`raysegment loop DOMAIN`: one turn of the closed loop for a domain whose world drifted.

1. the domain's captured traffic (`raysegment.registry.traffic`) becomes an unlabelled dataset, split into
   images to adapt on and images held back to judge: a frozen copy made inside the registry's store
   (server-side copies) that every run reads in place, no download step;
2. label-free search from the production model: AdaBN, and Tent at each learning rate, each scored
   with production on each held-back image by the paired consistency proxy (both over the classes
   either predicts, so a production model that collapsed to one class cannot look perfectly
   stable); none beats production -> refused, nothing registered;
3. the best is registered (a delta on production, with its signatures) as alias `candidate`;
4. shadow evaluation: the service mirrors a share of the domain's production requests to the
   candidate and scores both on each image (`serving.app`); once `shadow_images` pairs are in,
   the promotion policy decides on their means (candidate must win by more than `margin`);
   a loss or a timeout retires the candidate. `shadow_images: 0` decides on the held-back images.

Every step leaves a record in the domain's history (`raysegment registry history DOMAIN`);
`raysegment registry rollback DOMAIN` undoes a promotion.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

import torch

from raysegment.config import AdaptConfig, DataConfig, LoopConfig, OptimConfig, PretrainedConfig, RunConfig
from raysegment.data import open_split
from raysegment.engine.adapt import adapt
from raysegment.engine.policy import beats
from raysegment.engine.proxies import paired_consistency_per_image
from raysegment.engine.signature import Signature, domain_signature
from raysegment.models.io import ModelMeta, save_model
from raysegment.registry import ModelVersion, Registry
from raysegment.registry.audit import AuditRecord, LoopStep
from raysegment.registry.intake import estimated_metrics, lineage_fit
from raysegment.registry.promotion import CANDIDATE, Measured, promote_if_better, retire
from raysegment.registry.traffic import FrozenCapture, TrafficStore


@dataclass
class LoopOutcome:
    domain: str
    production: str
    candidate: int | None = None
    method: str | None = None  # the candidate's try ("adabn", "tent lr=0.001")
    promoted: bool = False
    reason: str = ""
    scores: dict[str, tuple[float, float]] = field(default_factory=dict)  # method: (its proxy, production's)
    shadow_pairs: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def run_config(
    meta: ModelMeta,
    production_dir: Path,
    data: FrozenCapture,
    out: Path,
    cfg: LoopConfig,
    method: str,
    lr: float = 1e-3,
) -> RunConfig:
    """One method's adaptation run, typed, from the production model's own settings, on the
    captured images where they lie (`data`, frozen in the registry's store)."""
    return RunConfig(
        data=DataConfig(root=data.root, domain=data.domain, unlabelled=True, resize=meta.resize),
        model=meta.model.model_copy(
            update={"pretrained": PretrainedConfig(source="checkpoint", uri=str(production_dir)), "freeze_depth": 0}
        ),
        optim=OptimConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=lr, seed=cfg.seed),
        adapt=AdaptConfig(method=method),
        output_dir=str(out / f"{method}-{lr:g}"),
    )


def candidate_signatures(
    registry: Registry, production: ModelVersion, model: torch.nn.Module, images: Any, meta: ModelMeta
) -> dict[str, Signature]:
    """The candidate's own signature and one under every model production's routing signature uses."""
    kept = production.signatures
    found = {"own": domain_signature(model, images, resize=meta.resize)}
    unders = [k for k in kept if k != "own"] + ([production.ref] if "own" in kept else [])
    for under in unders:
        found[under] = domain_signature(registry.load(under)[0], images, resize=meta.resize)
    return found


class LoopTurn:
    """One turn's state: the registry, the traffic, the outcome so far and its stage timings."""

    def __init__(self, registry_uri: str, domain: str, cfg: LoopConfig, log: Callable[[str], Any]) -> None:
        self.registry, self.traffic = Registry(registry_uri), TrafficStore(registry_uri)
        self.domain, self.cfg, self.log = domain, cfg, log
        self.production = self.registry.get_entry(domain)
        self.outcome = LoopOutcome(domain, self.production.ref)
        self.clock = time.monotonic()

    def lap(self, stage: str) -> None:
        self.outcome.timings[stage] = round(time.monotonic() - self.clock, 2)
        self.clock = time.monotonic()

    def note(self, step: LoopStep) -> None:
        self.registry.note(self.domain, AuditRecord(loop=step))

    def refuse(self, reason: str) -> LoopOutcome:
        self.outcome.reason = reason
        self.note(LoopStep(step="refused", reason=reason, production=self.production.ref))
        self.log(f"[loop] {self.domain}: refused: {reason}")
        return self.outcome

    def search(
        self, tmp: Path, data: FrozenCapture
    ) -> tuple[str, dict[str, torch.nn.Module], list[tuple[str, RunConfig]], int]:
        """Run every label-free try from production on the frozen copy of the captured images, score
        each against production on its held-back ones; returns (best, models, tries, held-back count)."""
        cfg, domain = self.cfg, self.domain
        model, meta, _ = self.registry.load(self.production.ref)
        production_dir = save_model(tmp / "production", model, meta)
        tries = [("adabn", run_config(meta, production_dir, data, tmp, cfg, "adabn"))] if "adabn" in cfg.methods else []
        if "tent" in cfg.methods:
            tries += [
                (f"tent lr={lr:g}", run_config(meta, production_dir, data, tmp, cfg, "tent", lr)) for lr in cfg.tent_lr
            ]
        val = open_split(data.root, domain, "val", unlabelled=True)
        results: dict[str, torch.nn.Module] = {}
        for name, run in tries:
            adapted = adapt(run, resume=False, progress=False, log=self.log).model
            rows = paired_consistency_per_image([adapted, model], val, meta.num_classes, meta.resize)
            results[name] = adapted
            ours, theirs = self.outcome.scores[name] = (mean(r[0] for r in rows), mean(r[1] for r in rows))
            self.log(f"[loop] {domain}: {name}: proxy {100 * ours:.2f} vs production {100 * theirs:.2f}")
        self.lap("search")
        best = max(results, key=lambda n: self.outcome.scores[n][0] - self.outcome.scores[n][1])
        self.note(LoopStep(step="search", scores=self.outcome.scores, best=best))
        return best, results, tries, len(val)

    def decide(self, version: int, method: str) -> LoopOutcome:
        """The one promotion policy on the shadow pairs (or, with `shadow_images: 0`, on the search's
        held-back scores); a candidate that loses, or gets too few pairs in time, is retired."""
        cfg, domain, production = self.cfg, self.domain, self.production
        best_score, production_score = self.outcome.scores[method]
        evidence = "held-back captured images"
        if cfg.shadow_images:
            pairs = wait_for_shadow(self.traffic, domain, version, production.version, cfg, self.log)
            self.outcome.shadow_pairs = len(pairs)
            self.lap("shadow")
            if len(pairs) < cfg.shadow_images:
                reason = f"{len(pairs)} of {cfg.shadow_images} shadow images within {cfg.shadow_timeout_s:g} s"
                retire(self.registry, domain, version, reason)
                self.outcome.reason = f"retired: {reason}"
                self.log(f"[loop] {domain}: {domain}@{version} {self.outcome.reason}")
                return self.outcome
            best_score, production_score = (
                sum(c for c, _ in pairs) / len(pairs),
                sum(p for _, p in pairs) / len(pairs),
            )
            evidence = f"shadow traffic ({len(pairs)} pairs)"
        measured = Measured(best_score, production_score, "proxy", production.ref, cfg.margin)
        decision = promote_if_better(self.registry, domain, version, measured, evidence=evidence)
        self.outcome.promoted, self.outcome.reason = decision.promoted, decision.reason
        if not decision.promoted:
            retire(self.registry, domain, version, decision.reason)
        self.lap("decide")
        verdict = "promoted to production" if decision.promoted else "retired"
        self.log(f"[loop] {domain}: {domain}@{version} {verdict}: {decision.reason}")
        return self.outcome


def run_loop(
    registry_uri: str, domain: str, cfg: LoopConfig, work_dir: str | None = None, log: Callable[[str], Any] = print
) -> LoopOutcome:
    turn = LoopTurn(registry_uri, domain, cfg, log)
    registry, production, outcome = turn.registry, turn.production, turn.outcome
    captured = len(turn.traffic.items(domain))
    turn.note(LoopStep(step="start", production=production.ref, captured=captured))
    if captured < cfg.min_images:
        return turn.refuse(
            f"{captured} captured images, the loop needs {cfg.min_images} (capture_domains in the Serve config)"
        )
    meta = production.meta
    data = turn.traffic.freeze(domain, meta.dataset_info(), cfg.val_share, cfg.seed)
    turn.lap("freeze")
    log(
        f"[loop] {domain}: {data.images} captured images frozen in the store "
        f"({turn.outcome.timings['freeze']} s), read there: {data.root}"
    )
    try:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            best, results, tries, held_back = turn.search(Path(tmp), data)
            best_score, production_score = outcome.scores[best]
            if not beats(best_score, production_score, "proxy", cfg.margin):
                return turn.refuse(
                    f"no label-free method beats production on {held_back} held-back captured images "
                    f"(best {best}: {100 * best_score:.2f} vs {100 * production_score:.2f})"
                )
            winner = results[best]
            train = open_split(data.root, domain, "train", unlabelled=True)
            val_images = open_split(data.root, domain, "val", unlabelled=True)
            fit = lineage_fit(registry, production.ref)
            version = registry.register(
                domain,
                winner,
                meta,
                {
                    "proxy_score": best_score,
                    "production_proxy_score": production_score,
                    **estimated_metrics(fit, winner, val_images, meta.resize, log, domain),
                },
                dict(tries)[best].model_dump(mode="json"),
                parent=production.ref,
                lineage={"method": best.split()[0], "target_labels": 0, "loop": True, "traffic_images": data.images},
                signatures=candidate_signatures(registry, production, winner, train, meta),
            )
    finally:
        turn.traffic.drop_frozen(data)
    outcome.candidate, outcome.method = version, best
    registry.set_alias(domain, version, CANDIDATE, record=AuditRecord(loop=LoopStep(step="candidate", method=best)))
    turn.lap("register")
    log(f"[loop] {domain}: {domain}@{version} ({best}) is the candidate")
    return turn.decide(version, best)


def wait_for_shadow(
    traffic: TrafficStore, domain: str, candidate: int, production: int, cfg: LoopConfig, log: Callable[[str], Any]
) -> list[tuple[float, float]]:
    """Poll the shadow record until `shadow_images` pairs are in or the timeout passes."""
    deadline = time.monotonic() + cfg.shadow_timeout_s
    pairs, reported = traffic.shadow(domain, candidate, production), -1
    while len(pairs) < cfg.shadow_images and time.monotonic() < deadline:
        if len(pairs) != reported:
            log(f"[loop] {domain}: shadow {len(pairs)}/{cfg.shadow_images} mirrored images")
            reported = len(pairs)
        time.sleep(cfg.shadow_poll_s)
        pairs = traffic.shadow(domain, candidate, production)
    return pairs
