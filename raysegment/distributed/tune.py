"""Ray Tune shell: per target domain, search the adaptation method (finetune, adabn, tent,
self_training) and its parameters, decay, freeze depth, lr, decoder and augmentation strength
with ASHA early stopping on the domain's score (trials drawn at random or by Optuna's TPE); every
trial is a Ray Train run of the engine.

The score is the target val mIoU when labels judge, or the unsupervised proxy on the val images
when the domain is searched without labels (only label-free methods). The winner per domain goes
into the registry as a delta on the source model, with its config, metrics, method, label count
and trial id; the promotion policy (`raysegment.registry.promotion`) makes it production only when it beats
the domain's production model (else the source model) by the same judge, else it stays `candidate`.
A search interrupted half-way resumes (`Tuner.restore`) when run again with the same spec; a domain
whose winner is already registered is skipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from raysegment.data import open_split
from raysegment.distributed.spec import TuneJob
from raysegment.distributed.train import check_resources, check_shared, ensure_ray
from raysegment.distributed.trials import concurrency, from_source, param_space, search_algorithm, tune_trial
from raysegment.distributed.winners import (
    Source,
    judge_winner,
    register_winner,
    selected_score,
    source_model_dir,
    source_score,
)
from raysegment.errors import RaySegmentError
from raysegment.models.rebuild import load_model
from raysegment.registry import Registry
from raysegment.storage import atomic_write_json, is_uri, join, upload_tree
from raysegment.viz import bar_chart_png, curves_png

DONE_FILE = "winner.json"


@dataclass
class DomainOutcome:
    domain: str
    trials: int
    epochs_spent: int
    best_score: float
    source_score: float
    config: dict[str, Any]
    trial_id: str
    version: int | None
    curves: dict[str, list[float]]


def tune_domain(spec: TuneJob, domain: str, source: str, storage: str, log=print) -> tuple[Any, str]:
    """Run (or resume) the search for one domain in `storage` (folder or URI), every trial starting
    from the source model at `source` (readable from every node); returns (ResultGrid, experiment path)."""
    search, run = spec.search, spec.run
    base = from_source(run, source)
    model, _ = load_model(source)
    trainable = tune.with_resources(
        partial(tune_trial, base=base.model_dump(mode="json"), domain=domain, storage=storage),
        {"cpu": 0, "memory": 1},
    )  # trial drivers take no CPU: the workers do (2-CPU deadlock otherwise)
    experiment = f"search-{domain}"
    path = join(storage, experiment)
    if tune.Tuner.can_restore(path):
        log(f"[tune] {domain}: resuming the interrupted search at {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = (
            ASHAScheduler(
                time_attr="epoch",
                max_t=search.max_epochs,
                grace_period=min(search.grace_period, search.max_epochs),
                reduction_factor=search.reduction_factor,
            )
            if search.early_stopping
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(search, run, model.num_stages),
            tune_config=tune.TuneConfig(
                metric="score",
                mode="max",
                scheduler=scheduler,
                num_samples=search.num_samples,
                search_alg=search_algorithm(search, concurrency(search, run)),
            ),
            run_config=tune.RunConfig(name=experiment, storage_path=storage, verbose=0),
        )
    return tuner.fit(), path


def search_storage(spec: TuneJob) -> str:
    """The search's Ray storage: `scale.storage_path`/name (object storage on a real cluster), else
    a folder beside the driver's output (one machine, or nodes sharing that filesystem)."""
    run = spec.run
    if run.scale.storage_path:
        return join(run.scale.storage_path, spec.name)
    return str(Path(run.output_dir).resolve() / spec.name)


def run_search(spec: TuneJob, log=print) -> list[DomainOutcome]:
    """Search every target domain; register and promote each winner; write the PNG summary."""
    ensure_ray()
    check_resources(spec.run)
    storage = Path(spec.run.output_dir).resolve() / spec.name  # this driver's own files
    ray_storage = search_storage(spec)  # what every node reads and writes: checkpoints, the source
    check_shared(ray_storage, "the search's storage (scale.storage_path)")
    check_shared(spec.registry, "registry")
    registry = Registry(spec.registry)
    folder, ref = source_model_dir(spec, registry, storage, log)
    uri = str(folder) if not is_uri(ray_storage) else upload_tree(folder, join(ray_storage, "source_model"))
    source = Source(folder, ref, load_model(folder)[0], uri)
    outcomes = []
    for domain in spec.targets:
        done = storage / f"search-{domain}" / DONE_FILE
        if done.is_file():
            outcome = DomainOutcome(**json.loads(done.read_text()))
            log(f"[tune] {domain}: winner already registered as {domain}@{outcome.version}")
        else:
            outcome = search_domain(spec, domain, source, registry, ray_storage, storage, log)
            atomic_write_json(done, outcome.__dict__)
        outcomes.append(outcome)
    write_summary(outcomes, storage)
    return outcomes


def search_domain(
    spec: TuneJob, domain: str, source: Source, registry: Registry, ray_storage: str, storage: Path, log=print
) -> DomainOutcome:
    """One domain: the source's score by the domain's judge, the search, the winner registered and judged."""
    d, judge = spec.run.data, spec.search.judged_by
    val = open_split(d.root, domain, d.val_split, d.layout, unlabelled=judge == "proxy")
    source_val = source_score(source.model, val, spec.run, judge)
    results, _ = tune_domain(spec, domain, source.uri, ray_storage, log)
    finished = [r for r in results if r.metrics and "score" in r.metrics]
    if not finished:
        errors = [str(r.error)[:300] for r in results if r.error]
        raise RaySegmentError(f"no trial for {domain} reported a score; first error: {errors[:1]}")
    best = max(finished, key=selected_score)
    curves = {r.metrics["trial_id"]: list(r.metrics_dataframe["score"]) for r in finished}
    version, params = register_winner(
        spec, domain, best, source, source_val, registry, ray_storage, storage / f"winner-{domain}"
    )
    decision = judge_winner(registry, spec, domain, version, selected_score(best), source, source_val, val)
    if not decision.promoted:
        log(f"[tune] {domain}: {domain}@{version} kept out of production ({decision.reason} of {decision.incumbent})")
    outcome = DomainOutcome(
        domain,
        len(list(results)),
        sum(len(c) for c in curves.values()),
        selected_score(best),
        source_val,
        params,
        best.metrics["trial_id"],
        version,
        curves,
    )
    log(
        f"[tune] {domain}: {outcome.trials} trials, {outcome.epochs_spent} epochs, best {params['method']} with "
        f"{judge} score {100 * outcome.best_score:.1f} (source-only {100 * source_val:.1f}) -> {domain}@{version}"
    )
    return outcome


def write_summary(outcomes: list[DomainOutcome], storage: Path) -> tuple[Path, Path]:
    curves = {f"{o.domain}/{tid[-5:]}": [100 * v for v in c] for o in outcomes for tid, c in o.curves.items()}
    curves_path = curves_png(
        storage / "tune_curves.png",
        curves,
        "trial validation score: mIoU, or the proxy without labels (ASHA stops the weak ones)",
        "score (%)",
    )
    bars = bar_chart_png(
        storage / "tune_winners.png",
        {
            "source-only": {o.domain: 100 * o.source_score for o in outcomes},
            "tuned winner": {o.domain: 100 * o.best_score for o in outcomes},
        },
        title="winner per target domain (val score)",
    )
    return curves_path, bars


def format_table(outcomes: list[DomainOutcome]) -> str:
    lines = [f"{'domain':<10} {'trials':>6} {'epochs':>6} {'source':>7} {'winner':>7}  version  config"]
    for o in outcomes:
        cfg = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.config.items())
        lines.append(
            f"{o.domain:<10} {o.trials:>6} {o.epochs_spent:>6} {100 * o.source_score:>6.1f}% "
            f"{100 * o.best_score:>6.1f}%  {o.domain}@{o.version}  {cfg}"
        )
    return "\n".join(lines)
