"""`raysegment compare`: how far each adaptation method takes a source model on each target domain.

Everything runs at the source model's working scale (or the one given) and is scored against
full-resolution labels.

Per target, the candidates are the source-only model, every label-free method (zero target labels),
few-shot fine-tuning with k labelled images (source replay, a slower backbone, the epoch chosen on
held-back images, the source model itself included) and the oracle fine-tuned on all target
labels. Where the target's test split has labels, each candidate gets test mIoU, per-class IoU and
the share of the source-only -> oracle gap it closes. Always, the unsupervised proxy scores the
source model and each label-free result on the val images, and the study reports which one the
proxy would ship, and why: a label-free result is picked only when it beats the source model's own
proxy score, so zero-label adaptation never ships a model the proxy rates below the source.
A target read as unlabelled (`unlabelled=True`, or a domain without masks) opens no target mask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from raysegment.apps.study_config import StudyConfig
from raysegment.apps.study_report import RESCALED, SOURCE, TargetReport, candidate_line, scale_line, write_outputs
from raysegment.config import (
    STUDY_VARIANTS,
    LoopConfig,
    ResizeConfig,
    RunConfig,
    parse_config,
)
from raysegment.data import open_split
from raysegment.data.folder import domain_name, image_folder_domain, is_image_folder
from raysegment.engine.adapt import adapt
from raysegment.engine.criteria import (
    Candidate,
    Scoring,
    criterion_scores,
)
from raysegment.engine.estimate import ConfidenceFit, estimate_miou
from raysegment.engine.evaluate import evaluate
from raysegment.engine.scale import pick_scale
from raysegment.engine.selection import select_images
from raysegment.errors import ConfigError
from raysegment.models.io import ModelMeta
from raysegment.models.rebuild import load_model
from raysegment.registry.intake import own_fit
from raysegment.registry.traffic import TrafficStore


def base_run_config(cfg: StudyConfig, meta: ModelMeta, resize: ResizeConfig | None) -> RunConfig:
    """The base run every candidate starts from: the source model, at the working scale."""
    return parse_config(
        {
            "data": {
                "root": cfg.data_root,
                "domain": cfg.source_domain,
                "layout": cfg.layout,
                "resize": resize.model_dump() if resize else None,
            },
            "model": {
                **meta.model.model_dump(mode="json"),
                "freeze_depth": 0,
                "pretrained": {"source": "checkpoint", "uri": cfg.source},
            },
            "optim": {"lr": cfg.lr, "batch_size": cfg.batch_size, "decay": 0.9},
            "adapt": {"source_domain": cfg.source_domain} | ({"criterion": cfg.criterion} if cfg.criterion else {}),
        },
        "adapt study",
    )


def candidate_config(
    base: RunConfig,
    domain: str,
    out: Path,
    method: str,
    epochs: int,
    labelled: int | None = None,
    unlabelled: bool = False,
    labelled_images: list[str] | None = None,
) -> RunConfig:
    """One candidate's run: typed copies of the base, never edited dicts. Every fine-tune (k-shot and
    the oracle, which has every label) uses the few-shot recipe: source replay, a slower backbone."""
    few_shot = method == "finetune"
    return base.model_copy(
        update={
            "data": base.data.model_copy(
                update={
                    "domain": domain,
                    "labelled_limit": labelled,
                    "labelled_images": labelled_images,
                    "unlabelled": unlabelled and method != "finetune",
                }
            ),
            "optim": base.optim.model_copy(update={"epochs": epochs, "backbone_lr_scale": 0.1 if few_shot else 1.0}),
            "adapt": base.adapt.model_copy(update={"method": method, "source_replay": few_shot}),
            "output_dir": str(out),
        }
    )


@dataclass(frozen=True)
class Study:
    """One comparison: its settings (`cfg`), and what they resolve to once, shared by every target."""

    cfg: StudyConfig
    base: RunConfig  # the source model's run at the working scale: every candidate's start
    source_model: Any
    confidence: ConfidenceFit | None = None  # the source val's confidence fit (estimates without labels)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def label_free(self) -> list[tuple[str, str, dict[str, float]]]:
        """(candidate name, method, adapt settings) of every label-free candidate."""
        c = self.cfg
        return [(m, m, {}) for m in c.methods] + [(v, *STUDY_VARIANTS[v]) for v in c.variants]


class TargetRun:
    """One target domain of a study: its held-back sets, and every candidate scored as it is made."""

    def __init__(self, study: Study, domain: str, log: Callable[[str], Any], name: str | None = None) -> None:
        self.study, self.domain, self.log = study, domain, log
        self.name = name or domain  # what the report and the run folders call it (`traffic:fog`)
        d, layout = study.base.data, study.base.data.layout
        self.val_images = open_split(d.root, domain, d.val_split, layout, unlabelled=True)
        self.test = None if study.cfg.unlabelled else open_split(d.root, domain, d.test_split, layout)
        has_labels = self.test is not None and self.test.labelled_count > 0
        self.val = None if study.cfg.unlabelled else open_split(d.root, domain, d.val_split, layout)
        self.val_labelled = self.val is not None and self.val.labelled_count > 0
        if study.cfg.canary and not self.val_labelled:
            raise ConfigError(f"--canary {study.cfg.canary}: {domain}'s val split has no labelled image to judge with")
        self.canary_set = self.val.labelled(study.cfg.canary) if study.cfg.canary and self.val is not None else None
        self.report = TargetReport(self.name, has_labels, criterion=study.base.adapt.criterion)
        if self.canary_set is not None:
            self.report.labels_used["canary"] = len(self.canary_set)
        self.judged: list[Candidate] = []

    def record(self, candidate: str, model: Any, labels: int, seconds: float, label_free: bool, scale: Any) -> None:
        report, eval_cfg = self.report, self.study.base.eval
        report.labels_used[candidate] = labels
        report.seconds[candidate] = seconds
        if label_free:
            self.judged.append(Candidate(candidate, model, scale))
            if self.canary_set is not None:
                report.canary_miou[candidate] = evaluate(model, self.canary_set, eval_cfg, resize=scale).miou
        if self.val is not None and self.val_labelled and label_free:
            report.val_miou[candidate] = evaluate(model, self.val, eval_cfg, resize=scale).miou
        if self.test is not None and report.labelled:
            result = evaluate(model, self.test, eval_cfg, resize=scale)
            report.test_miou[candidate], report.test_iou[candidate] = result.miou, result.per_class
        if self.study.confidence is not None:  # on the images the test labels score, their masks unread
            images = self.test if self.test is not None and report.labelled else self.val_images
            found = estimate_miou(model, self.study.confidence, images, scale, eval_cfg.batch_size)
            report.estimate[candidate] = asdict(found)
        self.log(candidate_line(report, candidate))

    def scaled_base(self) -> RunConfig:
        """The study's config at the target scale picked without labels (`target_short_sides`), the
        unadapted source at that scale recorded as a candidate; else the study's config."""
        s, base = self.study, self.study.base
        if not s.cfg.target_short_sides:
            return base
        start, d = time.perf_counter(), base.data
        train_images = open_split(d.root, self.domain, d.train_split, d.layout, unlabelled=True)
        picked, distances = pick_scale(
            s.source_model, train_images, s.cfg.target_short_sides, batch_size=base.optim.batch_size
        )
        self.report.scale = {"short_side": float(picked.short_side or 0)} | {str(k): v for k, v in distances.items()}
        self.log(f"[adapt] {self.name:<8} target scale: short side {picked.short_side} ({scale_line(distances)})")
        if picked != d.resize:
            self.record(RESCALED, s.source_model, 0, time.perf_counter() - start, label_free=True, scale=picked)
        return base.model_copy(update={"data": d.model_copy(update={"resize": picked})})

    def run_label_free(self) -> None:
        s, quiet = self.study, (lambda line: None)
        base = self.scaled_base()
        for name, method, settings in s.label_free:
            start = time.perf_counter()
            runs = s.out / "runs" / self.name.replace(":", "_") / name
            cfg = candidate_config(base, self.domain, runs, method, s.cfg.epochs_of(method), unlabelled=True)
            cfg = cfg.model_copy(
                update={"adapt": cfg.adapt.model_copy(update={**settings, "canary": s.cfg.canary or None})}
            )
            result = adapt(cfg, resume=False, progress=False, log=quiet)
            self.record(name, result.model, 0, time.perf_counter() - start, label_free=True, scale=cfg.data.resize)
        c = s.base
        scoring = Scoring(confidence=c.adapt.proxy_confidence, batch_size=c.eval.batch_size)
        scores = criterion_scores(self.judged, self.val_images, scoring=scoring)
        self.report.proxy = {name: {**sc, "score": sc[self.report.criterion]} for name, sc in scores.items()}

    def run_labelled(self) -> None:
        s, d, quiet = self.study, self.study.base.data, (lambda line: None)
        if s.cfg.unlabelled and (s.cfg.shots or s.cfg.oracle):
            self.log(f"[adapt] {self.name:<8} no k-shot or oracle rows: the target is read without labels")
            return
        train = None if s.cfg.unlabelled else open_split(d.root, self.domain, d.train_split, d.layout)
        available = train.labelled_count if train is not None else 0
        order = self.label_order(train) if train is not None and available and s.cfg.shots else None
        semi = "self_training" in s.cfg.methods
        for k in [*s.cfg.shots, None] if s.cfg.oracle else list(s.cfg.shots):
            name = "oracle" if k is None else f"{k}-shot"
            if available == 0 or not self.val_labelled or (k is not None and k > available):
                self.log(
                    f"[adapt] {self.name:<8} {name:<14} skipped: needs {k or 'all'} labelled train images and "
                    f"labelled val images ({available} labelled train images)"
                )
                continue
            chosen = order[:k] if order is not None and k is not None else None
            rows = [(name, "finetune", s.cfg.epochs_of("oracle" if k is None else "finetune"))]
            if semi and k is not None:  # the k labels beside the pseudo-labelled rest of the target
                rows.append((f"{k}-shot self-training", "self_training", s.cfg.epochs_of("self_training")))
            for row, method, epochs in rows:
                start = time.perf_counter()
                runs = s.out / "runs" / self.name.replace(":", "_") / row.replace("-", "_").replace(" ", "_")
                cfg = candidate_config(s.base, self.domain, runs, method, epochs, labelled=k, labelled_images=chosen)
                result = adapt(cfg, resume=False, progress=False, log=quiet)
                seconds = time.perf_counter() - start
                self.record(row, result.model, k or available, seconds, label_free=False, scale=d.resize)

    def label_order(self, train: Any) -> list[str] | None:
        """The labelled train images in the order `select` would have them labelled (None: file
        order, the first k): ranked by the source model as if none had a mask."""
        s = self.study
        if s.cfg.select == "first":
            return None
        labelled, base = train.labelled(), s.base
        far_from = None
        if s.cfg.select == "active-novel":
            a = base.adapt
            root, layout = a.source_root or base.data.root, a.source_layout or base.data.layout
            far_from = open_split(root, a.source_domain or "", base.data.train_split, layout, unlabelled=True)
        selection = select_images(
            s.source_model,
            labelled,
            max(s.cfg.shots),
            s.cfg.select,
            base.data.resize,
            s.cfg.select_seed,
            far_from=far_from,
        )
        self.report.selected = [labelled.stem(i) for i in selection.order]
        chosen = ", ".join(self.report.selected[: max(s.cfg.shots)])
        self.log(f"[adapt] {self.name:<8} labels chosen {s.cfg.select}: {chosen}")
        return self.report.selected


def run_study(
    cfg: StudyConfig, log: Callable[[str], Any] = print, ship: Callable[[TargetRun], Any] | None = None
) -> list[TargetReport]:
    """Run the whole comparison in this process; writes `results.json` and a PNG chart under `cfg.out`.

    `cfg.variants` (names of `config.STUDY_VARIANTS`) add label-free candidates; `cfg.canary` > 0
    lets the first k labelled val images judge the label-free candidates (and their epochs) instead
    of the proxy; `cfg.target_short_sides` picks each target's working scale without labels
    (`engine.scale`) for every label-free candidate, and adds the unadapted source at that scale as
    a candidate. A target `traffic:<domain>` reads the domain's captured traffic beside
    `cfg.registry`, a plain folder of images is read as an unlabelled domain named after it
    (`target_data`). `ship`, when given, is called with each finished target (`apps.ship.ship_pick`
    registers its judge's pick)."""
    source_model, meta = load_model(cfg.source)
    resize = cfg.resize or meta.resize  # by default, the scale the source model was trained at
    confidence = own_fit(source_model, cfg.data_root, cfg.source_domain, cfg.layout, resize)
    study = Study(cfg, base_run_config(cfg, meta, resize), source_model, confidence)
    reports = []
    for target in cfg.targets:
        with target_data(study, target, cfg.registry, meta) as (target_study, domain):
            run = TargetRun(target_study, domain, log, name=domain if is_image_folder(target) else target)
            if is_image_folder(target):
                log(f"[adapt] {target}: {len(run.val_images)} held-back images of domain {domain}, no labels read")
            run.record(SOURCE, source_model, 0, 0.0, label_free=True, scale=resize)
            run.run_label_free()
            run.run_labelled()
            log(f"[adapt] {run.name:<8} the judge picks {run.report.proxy_choice}: {run.report.proxy_reason}")
            if ship is not None:
                ship(run)
        reports.append(run.report)
        write_outputs(reports, study.out)  # each finished target is on disk before the next starts
    return reports


TRAFFIC_TARGET = "traffic:"  # `traffic:fog`: the images the service captured for fog, from the registry's store
FOLDER_TARGETS = "targets"  # under the study's `out`: plain image folders laid out as domains


def target_domain(target: str) -> str:
    """The domain a target names: a dataset domain, `traffic:<domain>`, or a plain folder of images
    (its folder name)."""
    if is_image_folder(target):
        return domain_name(target)
    return target.removeprefix(TRAFFIC_TARGET)


def unlabelled_target(study: Study, root: str) -> Study:
    """The study reading its target from `root` (a raysegment-layout dataset) as unlabelled, so the
    proxy judges; self-training keeps its labelled source where it was."""
    base = study.base
    d = base.data.model_copy(update={"root": root, "layout": "raysegment", "unlabelled": True})
    a = base.adapt.model_copy(
        update={"source_root": base.adapt.source_root or base.data.root, "source_layout": base.data.layout}
    )
    unlabelled = study.cfg.model_copy(update={"unlabelled": True})
    return replace(study, base=base.model_copy(update={"data": d, "adapt": a}), cfg=unlabelled)


@contextmanager
def target_data(study: Study, target: str, registry: str | None, meta: ModelMeta) -> Iterator[tuple[Study, str]]:
    """The study and domain a target reads: the dataset's domain; for a plain folder of images, that
    folder laid out under `out/targets` (kept: registered versions are judged on it later); for
    `traffic:<domain>` the domain's captured traffic, frozen inside the registry's store and read
    there (split as the loop splits it), the frozen copy dropped afterwards. The last two are unlabelled,
    so judged by the proxy."""
    loop = LoopConfig()
    if is_image_folder(target):
        domain = target_domain(target)
        root = image_folder_domain(target, study.out / FOLDER_TARGETS, domain, meta.dataset_info(), loop.val_share)
        yield unlabelled_target(study, str(root.resolve())), domain
        return
    if not target.startswith(TRAFFIC_TARGET):
        yield study, target
        return
    if not registry:
        raise ConfigError(f"target {target}: captured traffic lives beside a registry; pass --registry")
    domain = target_domain(target)
    traffic = TrafficStore(registry)
    captured = len(traffic.items(domain))
    if captured < 2:
        raise ConfigError(f"target {target}: {captured} captured images; at least 2 are needed")
    data = traffic.freeze(domain, meta.dataset_info(), loop.val_share, loop.seed)
    try:
        yield unlabelled_target(study, data.root), domain
    finally:
        traffic.drop_frozen(data)
