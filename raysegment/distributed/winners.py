"""What a search makes of its winners: the source it starts from (registered once), the trial's
selected model read back from the search's storage, the registration (a delta on the source, with
lineage and signatures; never twice) and the one promotion policy against the domain's incumbent."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from raysegment.config import Judge, RunConfig
from raysegment.data import open_labelled, open_split
from raysegment.distributed.spec import TuneJob
from raysegment.distributed.trials import from_source, trial_run_config
from raysegment.engine.checkpoint import SELECTED
from raysegment.engine.judge import judged_scores
from raysegment.engine.signature import version_signatures
from raysegment.errors import RaySegmentError
from raysegment.models.io import save_model
from raysegment.models.rebuild import load_model
from raysegment.registry import Registry
from raysegment.registry.audit import Decision
from raysegment.registry.intake import estimated_metrics, lineage_fit, register_source
from raysegment.registry.promotion import PRODUCTION, Measured, promote_if_better
from raysegment.storage import join, resolve


@dataclass(frozen=True)
class Source:
    """The model every trial adapts: a local folder, its registry ref, the model, and where every
    node reads it (`uri`: the folder, or its copy in the search's object storage)."""

    folder: Path
    ref: str
    model: torch.nn.Module
    uri: str


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
    d = spec.run.data
    ref = register_source(registry, spec.source, d.root, d.domain, d.layout, d.train_split, log)
    return Path(spec.source), ref


def register_winner(
    spec: TuneJob,
    domain: str,
    best: Any,
    source: Source,
    source_val: float,
    registry: Registry,
    ray_storage: str,
    local: Path,
) -> tuple[int, dict[str, Any]]:
    """Register the best trial's selected model (once: a search resumed after registering reuses the
    version); returns (version, its search parameters)."""
    d, judge = spec.run.data, spec.search.judged_by
    ckpt = trial_selected_model(ray_storage, best.metrics, local)
    winner, meta = load_model(ckpt)
    method = best.config["method"]
    params = {k: best.config[k] for k in ("method", "decay", "lr", "freeze_depth", "decoder", "jitter")}
    if method == "self_training":
        params.update(ema_alpha=best.config["ema_alpha"], fda_beta=best.config["fda_beta"])
    version = registered_version(registry, domain, spec.name, best.metrics["trial_id"])
    if version is not None:
        return version, params
    labels_seen = (
        len(open_labelled(d.root, domain, d.train_split, d.layout, d.labelled_limit, d.labelled_images))
        if method == "finetune"
        else 0
    )
    reported = {k.removeprefix("selected_"): v for k, v in best.metrics.items() if k.startswith("selected_")}
    metrics = {k: float(v) for k, v in reported.items() if k in ("val_miou", "score") or k.startswith("proxy_")}
    train_images = open_split(d.root, domain, d.train_split, d.layout, unlabelled=True)
    held_back = open_split(d.root, domain, d.val_split, d.layout, unlabelled=True)
    estimate = estimated_metrics(lineage_fit(registry, source.ref), winner, held_back, meta.resize, name=domain)
    version = registry.register(
        domain,
        winner,
        meta,
        {**metrics, "source_score": source_val, **estimate},
        trial_run_config(from_source(spec.run, source.uri), domain, best.config, str(ckpt)).model_dump(mode="json"),
        parent=source.ref,
        lineage={
            "trial_id": best.metrics["trial_id"],
            "method": method,
            "search": spec.name,
            "target_labels": labels_seen,
            "judge": judge,
        },
        signatures=version_signatures(winner, train_images, meta.resize, (source.ref, source.model)),
    )
    return version, params


def judge_winner(
    registry: Registry,
    spec: TuneJob,
    domain: str,
    version: int,
    score: float,
    source: Source,
    source_val: float,
    val: Any,
) -> Decision:
    """The one promotion policy: the winner against the domain's production model (else the source),
    by the search's judge."""
    judge = spec.search.judged_by
    incumbent, incumbent_score = incumbent_of(registry, domain, source.ref, source_val, val, spec.run, judge)
    return promote_if_better(registry, domain, version, Measured(score, incumbent_score, judge, incumbent))


def registered_version(registry: Registry, domain: str, search: str, trial_id: str) -> int | None:
    """The version this search already registered for this trial (registration and `winner.json`
    are two writes: a search resumed between them must not register the winner twice)."""
    for entry in registry.entries(domain):
        lineage = entry.lineage
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
