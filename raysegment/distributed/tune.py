"""Ray Tune shell: per target domain, search the adaptation method (finetune, adabn, tent,
self_training) and its parameters, decay, freeze depth, lr, decoder and augmentation strength
with ASHA early stopping on the domain's score (trials drawn at random or by Optuna's TPE); every
trial is a Ray Train run of the engine.

The score is the target val mIoU when labels judge, or the unsupervised proxy on the val images
when the domain is searched without labels (only label-free methods). The winner per domain goes
into the registry as a delta on the source model, with its config, metrics, method, label count
and trial id; the promotion policy (`raysegment.promotion`) makes it production only when it beats
the domain's production model (else the source model) by the same judge, else it stays `candidate`.
A search interrupted half-way resumes (`Tuner.restore`) when run again with the same spec; a domain
whose winner is already registered is skipped.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from raysegment.config import Judge, RunConfig, SearchConfig
from raysegment.data import open_split
from raysegment.distributed.spec import TuneJob
from raysegment.distributed.train import build_trainer, check_resources, check_shared, ensure_ray
from raysegment.engine.checkpoint import SELECTED
from raysegment.engine.judge import judged_scores
from raysegment.engine.signature import version_signatures
from raysegment.errors import RaySegmentError
from raysegment.models import load_model, save_model
from raysegment.promotion import PRODUCTION, promote_if_better
from raysegment.registry import Registry
from raysegment.storage import atomic_write_json, is_uri, join, resolve, upload_tree
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


def trial_run_config(base: RunConfig, domain: str, params: dict, out_dir: str) -> RunConfig:
    """The RunConfig of one trial: typed copies of the spec's run with this trial's sampled parameters.

    A finetune trial with few target labels (`data.labelled_limit`) uses the few-shot recipe:
    source batches replayed beside the target ones; every trial's result is its best-scored epoch.
    """
    method = params["method"]
    adapt_update = {
        "method": method,
        "source_domain": base.data.domain,
        "judge": params["judge"],
        "source_replay": method == "finetune" and base.data.labelled_limit is not None,
    }
    adapt_update.update({k: params[k] for k in ("ema_alpha", "fda_beta") if k in params})
    return base.model_copy(
        update={
            "data": base.data.model_copy(update={"domain": domain}),
            "model": base.model.model_copy(
                update={"freeze_depth": params["freeze_depth"], "decoder": params["decoder"]}
            ),
            "optim": base.optim.model_copy(
                update={"lr": params["lr"], "decay": params["decay"], "epochs": params["max_epochs"]}
            ),
            "augment": base.augment.model_copy(update={"jitter": params["jitter"]}),
            "adapt": base.adapt.model_copy(update=adapt_update),
            "output_dir": out_dir,
        }
    )


def tune_trial(params: dict, base: dict, domain: str, storage: str) -> None:
    """One Tune trial = one Ray Train fine-tune, reporting to Tune every epoch. `storage` is the
    search's Ray storage (a folder or URI): its checkpoints go there, never only to this node."""
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    out_dir = str(Path(tempfile.gettempdir()) / "raysegment-trials" / trial_id)  # node-local scratch only
    cfg = trial_run_config(RunConfig.model_validate(base), domain, params, out_dir)
    build_trainer(
        cfg, f"train-{trial_id}", join(storage, "trial_train"), callbacks=[TuneReportCallback()], keep=1
    ).fit()


def param_space(search: SearchConfig, run: RunConfig, num_stages: int) -> dict:
    depths = search.freeze_depth if search.freeze_depth is not None else list(range(num_stages + 1))
    decoders = search.decoder or [run.model.decoder]
    return {
        "decay": tune.uniform(*search.decay),
        "lr": tune.loguniform(*search.lr),
        "freeze_depth": tune.choice(depths),
        "decoder": tune.choice(decoders),
        "jitter": tune.choice(search.jitter),
        "max_epochs": search.max_epochs,
        "method": tune.choice(search.method),
        "ema_alpha": tune.choice(search.ema_alpha),
        "fda_beta": tune.choice(search.fda_beta),
        "judge": search.judged_by,
    }


def concurrency(search: SearchConfig, run: RunConfig) -> int:
    """Trials that fit at once: each trial's workers reserve CPUs; its driver reserves none."""
    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    per_trial = run.scale.num_workers * max(run.scale.cpus_per_worker, 1e-9)
    return max(1, int(ray.cluster_resources().get("CPU", 1) // per_trial))


def search_algorithm(search: SearchConfig, max_concurrent: int) -> Searcher | BasicVariantGenerator:
    """The spec's searcher, seeded, at most `max_concurrent` trials at once. TPE learns from the final
    scores of finished trials (one ASHA stopped counts with the score it was stopped at), so it can
    only do better than random after its random start-up trials, in searches with many trials."""
    if search.searcher == "random":
        return BasicVariantGenerator(random_state=search.seed, max_concurrent=max_concurrent)
    import optuna
    from optuna.samplers import TPESampler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study on the search's console
    # Optuna's default of 10 random trials first would leave a 12-trial search almost all random.
    sampler = TPESampler(seed=search.seed, n_startup_trials=max(max_concurrent, search.num_samples // 4))
    return ConcurrencyLimiter(OptunaSearch(sampler=sampler), max_concurrent=max_concurrent)


def from_source(run: RunConfig, source_dir: str) -> RunConfig:
    """The spec's run, starting from the source model (every trial adapts it)."""
    return run.model_copy(
        update={
            "model": run.model.model_copy(
                update={
                    "pretrained": run.model.pretrained.model_copy(
                        update={"source": "checkpoint", "uri": str(source_dir)}
                    )
                }
            )
        }
    )


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


def source_model_dir(spec: TuneJob, registry: Registry, storage: Path, log=print) -> tuple[Path, str]:
    """A local model folder for the source and its registry ref. A source given as a folder is
    registered once, under its own domain (`run.data.domain`), with the drift and routing
    signatures of that domain's train images; without those images it is registered without them,
    and the log says so (serving then cannot route to it or measure drift from it)."""
    if "@" in spec.source:
        model, meta, entry = registry.load(spec.source)
        folder = storage / "source_model"
        save_model(folder, model, meta)
        return folder, entry.ref
    folder, d = Path(spec.source), spec.run.data
    for entry in registry.entries(d.domain):
        if entry.manifest.lineage.source_path == str(folder):
            return folder, entry.ref
    model, meta = load_model(folder)
    try:
        images = open_split(d.root, d.domain, d.train_split, d.layout, unlabelled=True)
    except RaySegmentError as exc:
        log(f"[tune] source {d.domain}: registered without drift/routing signatures: {exc}")
        signatures = None
    else:
        signatures = version_signatures(model, images, meta.resize)
    version = registry.register(
        d.domain,
        model,
        meta,
        meta.metrics,
        meta.model.model_dump(mode="json"),
        lineage={"source_path": str(folder), "method": "source"},
        signatures=signatures,
    )
    return folder, f"{d.domain}@{version}"


def run_search(spec: TuneJob, log=print) -> list[DomainOutcome]:
    """Search every target domain; register and promote each winner; write the PNG summary."""
    ensure_ray()
    check_resources(spec.run)
    storage = Path(spec.run.output_dir).resolve() / spec.name  # this driver's own files
    ray_storage = search_storage(spec)  # what every node reads and writes: checkpoints, the source
    check_shared(ray_storage, "the search's storage (scale.storage_path)")
    check_shared(spec.registry, "registry")
    registry = Registry(spec.registry)
    source_dir, source_ref = source_model_dir(spec, registry, storage, log)
    source_model, _ = load_model(source_dir)
    source = str(source_dir) if not is_uri(ray_storage) else upload_tree(source_dir, join(ray_storage, "source_model"))
    outcomes = []
    for domain in spec.targets:
        done = storage / f"search-{domain}" / DONE_FILE
        if done.is_file():
            outcome = DomainOutcome(**json.loads(done.read_text()))
            log(f"[tune] {domain}: winner already registered as {domain}@{outcome.version}")
            outcomes.append(outcome)
            continue
        d = spec.run.data
        judge = spec.search.judged_by
        val = open_split(d.root, domain, d.val_split, d.layout, unlabelled=judge == "proxy")
        source_val = source_score(source_model, val, spec.run, judge)
        results, _ = tune_domain(spec, domain, source, ray_storage, log)
        finished = [r for r in results if r.metrics and "score" in r.metrics]
        if not finished:
            errors = [str(r.error)[:300] for r in results if r.error]
            raise RaySegmentError(f"no trial for {domain} reported a score; first error: {errors[:1]}")
        best = max(finished, key=selected_score)
        best_score = selected_score(best)
        curves = {r.metrics["trial_id"]: list(r.metrics_dataframe["score"]) for r in finished}
        epochs_spent = sum(len(c) for c in curves.values())
        ckpt = trial_selected_model(ray_storage, best.metrics, storage / f"winner-{domain}")
        winner, meta = load_model(ckpt)
        method = best.config["method"]
        params = {k: best.config[k] for k in ("method", "decay", "lr", "freeze_depth", "decoder", "jitter")}
        if method == "self_training":
            params.update(ema_alpha=best.config["ema_alpha"], fda_beta=best.config["fda_beta"])
        labels_seen = (
            len(open_split(d.root, domain, d.train_split, d.layout).labelled(d.labelled_limit))
            if method == "finetune"
            else 0
        )
        reported = {k.removeprefix("selected_"): v for k, v in best.metrics.items() if k.startswith("selected_")}
        metrics = {k: float(v) for k, v in reported.items() if k in ("val_miou", "score") or k.startswith("proxy_")}
        lineage = {
            "trial_id": best.metrics["trial_id"],
            "method": method,
            "search": spec.name,
            "target_labels": labels_seen,
            "judge": judge,
        }
        version = registered_version(registry, domain, spec.name, best.metrics["trial_id"])  # a crash after
        if version is None:  # registering: reuse
            train_images = open_split(d.root, domain, d.train_split, d.layout, unlabelled=True)
            signatures = version_signatures(winner, train_images, meta.resize, (source_ref, source_model))
            version = registry.register(
                domain,
                winner,
                meta,
                {**metrics, "source_score": source_val},
                trial_run_config(from_source(spec.run, source), domain, best.config, str(ckpt)).model_dump(mode="json"),
                parent=source_ref,
                lineage=lineage,
                signatures=signatures,
            )
        incumbent, incumbent_score = incumbent_of(registry, domain, source_ref, source_val, val, spec.run, judge)
        decision = promote_if_better(registry, domain, version, best_score, incumbent_score, judge, incumbent)
        if not decision.promoted:
            log(f"[tune] {domain}: {domain}@{version} kept out of production ({decision.reason} of {incumbent})")
        outcome = DomainOutcome(
            domain,
            len(list(results)),
            epochs_spent,
            best_score,
            source_val,
            params,
            best.metrics["trial_id"],
            version,
            curves,
        )
        atomic_write_json(done, outcome.__dict__)
        outcomes.append(outcome)
        log(
            f"[tune] {domain}: {outcome.trials} trials, {epochs_spent} epochs, best {method} with {judge} score "
            f"{100 * outcome.best_score:.1f} (source-only {100 * source_val:.1f}) -> {domain}@{version}"
        )
    write_summary(outcomes, storage)
    return outcomes


def registered_version(registry: Registry, domain: str, search: str, trial_id: str) -> int | None:
    """The version this search already registered for this trial (registration and `winner.json`
    are two writes: a search resumed between them must not register the winner twice)."""
    for entry in registry.entries(domain):
        lineage = entry.manifest.lineage
        if lineage.search == search and lineage.trial_id == trial_id:
            return entry.version
    return None


def incumbent_of(
    registry: Registry, domain: str, source_ref: str, source_val: float, val: Any, run: RunConfig, judge: Judge
) -> tuple[str, float]:
    """What a winner must beat: the domain's production model if it has one, else the source model,
    scored by the same judge on the same held-back images."""
    production = registry.aliases(domain).get(PRODUCTION)
    if production is None:
        return source_ref, source_val
    model, _, entry = registry.load(f"{domain}@{production}")
    return entry.ref, source_score(model, val, run, judge)


def search_storage(spec: TuneJob) -> str:
    """The search's Ray storage: `scale.storage_path`/name (object storage on a real cluster), else
    a folder beside the driver's output (one machine, or nodes sharing that filesystem)."""
    run = spec.run
    if run.scale.storage_path:
        return join(run.scale.storage_path, spec.name)
    return str(Path(run.output_dir).resolve() / spec.name)


def trial_selected_model(storage: str, metrics: dict[str, Any], local: Path) -> Path:
    """A local folder holding the trial's selected model (its best-scored epoch so far), read from
    the search's storage, never from the path of the node that ran the trial: the checkpoint its
    last report names, else the newest checkpoint of its Train run (a search resumed after a crash
    can leave the last report naming a checkpoint the rerun has since replaced, keep=1). From
    object storage it is copied to `local`."""
    import pyarrow.fs as pafs

    fs, root = resolve(storage)

    def selected(checkpoint: str) -> str | None:
        folder = f"{checkpoint.rstrip('/')}/engine/{SELECTED}"
        return folder if fs.get_file_info(f"{folder}/model.json").type == pafs.FileType.File else None

    reported = metrics.get("checkpoint_path")
    chosen = selected(reported) if reported else None
    if chosen is None:
        run = f"{root}/trial_train/train-{metrics['trial_id']}"
        infos = fs.get_file_info(pafs.FileSelector(run, allow_not_found=True))
        kept = sorted(i.path for i in infos if i.base_name.startswith("checkpoint_"))  # names sort by time
        found = [f for f in map(selected, kept) if f]
        if not found:
            raise RaySegmentError(f"trial {metrics['trial_id']} left no checkpoint in {join(storage, run)}")
        chosen = found[-1]
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(chosen)
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    pafs.copy_files(chosen, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def selected_score(result: Any) -> float:
    """A trial's result: its selected (best-scored) epoch's score, not blindly its last epoch's."""
    return result.metrics.get("selected_score", result.metrics["score"])


def source_score(model: torch.nn.Module, val: Any, run: RunConfig, judge: Judge) -> float:
    """The source model's score by the domain's judge: val mIoU, or its proxy (agreement 1 by definition)."""
    return judged_scores(model, val, run, judge)["score"]


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
