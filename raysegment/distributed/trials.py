"""One Tune trial: its sampled parameters, the RunConfig they make, and the search's parameter
space and searcher. A trial is a Ray Train run of the engine (`distributed.train.build_trainer`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

from raysegment.config import RunConfig, SearchConfig
from raysegment.distributed.ingest import uses_ray_data
from raysegment.distributed.train import build_trainer
from raysegment.errors import ConfigError
from raysegment.storage import join


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
    """The trials' search space; freeze depths default to every depth the encoder has stages for
    (none beyond 0 for an encoder without a timm stage table)."""
    if search.decoder and run.model.library != "raysegment":
        raise ConfigError(
            f"search.decoder picks among raysegment's decoders; a {run.model.library} model's architecture "
            f"is its checkpoint's ({run.model.arch}): leave search.decoder out"
        )
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
    """Trials that fit at once: each trial's workers reserve CPUs (and, reading through Ray Data,
    room for one decode task); its driver reserves none."""
    if search.max_concurrent_trials:
        return search.max_concurrent_trials
    per_trial = run.scale.num_workers * max(run.scale.cpus_per_worker, 1e-9)
    per_trial += run.data.decode_cpus if uses_ray_data(run) else 0.0
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
