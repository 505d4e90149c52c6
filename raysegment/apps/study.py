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

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from raysegment.apps.study_config import StudyConfig
from raysegment.config import (
    CRITERIA,
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
    CriterionQuality,
    criterion_quality,
    criterion_scores,
)
from raysegment.engine.estimate import ConfidenceFit, estimate_miou
from raysegment.engine.evaluate import evaluate
from raysegment.engine.policy import pick
from raysegment.engine.scale import pick_scale
from raysegment.engine.selection import select_images
from raysegment.errors import ConfigError
from raysegment.models.io import ModelMeta
from raysegment.models.rebuild import load_model
from raysegment.registry.intake import own_fit
from raysegment.registry.traffic import TrafficStore
from raysegment.viz import bar_chart_png

SOURCE = "source-only"
RESCALED = "source-rescaled"  # the source model, unadapted, at the target scale picked without labels


@dataclass
class TargetReport:
    domain: str
    labelled: bool  # test labels scored the candidates
    test_miou: dict[str, float] = field(default_factory=dict)  # candidate -> target test mIoU
    test_iou: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate -> class -> IoU
    proxy: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate -> val proxy metrics
    val_miou: dict[str, float] = field(default_factory=dict)  # candidate -> val mIoU (the label check)
    labels_used: dict[str, int] = field(default_factory=dict)  # candidate -> target labels it saw
    seconds: dict[str, float] = field(default_factory=dict)
    criterion: str = "consistency"  # what the proxy judge picks by (proxy[c]["score"] is its score)
    canary_miou: dict[str, float] = field(default_factory=dict)  # candidate -> mIoU on k labelled val images
    scale: dict[str, float] = field(default_factory=dict)  # picked target short side, distance per side
    selected: list[str] = field(default_factory=list)  # the train images the k-shot rows label, in order
    estimate: dict[str, dict[str, Any]] = field(default_factory=dict)  # candidate -> estimated mIoU, no labels

    @property
    def above_oracle(self) -> list[str]:
        """Candidates scoring above the oracle on test: it is then no upper reference for them."""
        oracle = self.test_miou.get("oracle")
        if oracle is None:
            return []
        return [c for c, m in self.test_miou.items() if c != "oracle" and m > oracle]

    def gap_closed(self, candidate: str) -> float:
        """(m - source) / (oracle - source) in test mIoU; NaN without labels, an oracle or a gap."""
        source, oracle = self.test_miou.get(SOURCE), self.test_miou.get("oracle")
        if source is None or oracle is None or oracle - source <= 1e-9 or candidate not in self.test_miou:
            return math.nan
        return (self.test_miou[candidate] - source) / (oracle - source)

    @property
    def judged_by(self) -> str:
        """What picks among the label-free results: the canary labels when there are some, else the proxy."""
        return f"canary ({self.canary_images} labelled val images)" if self.canary_miou else f"proxy ({self.criterion})"

    @property
    def canary_images(self) -> int:
        return self.labels_used.get("canary", 0)

    @property
    def proxy_choice(self) -> str:
        """What ships with zero training labels: the best score by the judge (canary mIoU when a few
        val labels exist, else the proxy); the source model unless a result beats it outright."""
        if self.canary_miou:
            return pick(self.canary_miou, SOURCE, "labels")
        return pick({c: p["score"] for c, p in self.proxy.items()}, SOURCE, "proxy")

    @property
    def proxy_reason(self) -> str:
        choice = self.proxy_choice
        scores = self.canary_miou if self.canary_miou else {c: p["score"] for c, p in self.proxy.items()}
        source, what = scores[SOURCE], self.judged_by
        if choice == SOURCE:
            return (
                f"no label-free result beats the source model's {what} score {100 * source:.1f}, "
                "so the source model stays"
            )
        return (
            f"{choice} has the best {what} score, {100 * scores[choice]:.1f} "
            f"against the source model's {100 * source:.1f}"
        )

    def criterion_quality(self, criterion: str) -> CriterionQuality:
        """How `criterion` ranks this study's label-free candidates against test mIoU (labelled studies)."""
        return criterion_quality(self.proxy, self.test_miou, criterion, SOURCE)

    @property
    def label_choice(self) -> str | None:
        """What val labels would pick among the same zero-label candidates (None without val labels)."""
        candidates = {c: v for c, v in self.val_miou.items() if c in self.proxy}
        return max(candidates, key=lambda c: candidates[c]) if candidates else None


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
    num_classes: int
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
        scores = criterion_scores(
            self.judged,
            self.val_images,
            s.num_classes,
            batch_size=c.eval.batch_size,
            confidence=c.adapt.proxy_confidence,
        )
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
    study = Study(cfg, base_run_config(cfg, meta, resize), source_model, meta.num_classes, confidence)
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


def candidate_line(report: TargetReport, candidate: str) -> str:
    line = f"[adapt] {report.domain:<8} {candidate:<18}"
    if candidate in report.test_miou:
        line += f" test mIoU {100 * report.test_miou[candidate]:5.1f}"
    if candidate in report.canary_miou:
        line += f" canary mIoU {100 * report.canary_miou[candidate]:5.1f}"
    if candidate in report.estimate:
        line += f" estimated {estimate_text(report.estimate[candidate])}"
    return line + f" ({report.seconds[candidate]:.0f} s)"


def estimate_text(found: dict[str, Any]) -> str:
    return f"{100 * found['miou']:.1f} [{100 * found['low']:.1f}-{100 * found['high']:.1f}]"


def scale_line(distances: dict[int, float]) -> str:
    return ", ".join(f"{side}: {d:.3f}" for side, d in distances.items())


def criterion_table(report: TargetReport) -> str:
    """Every criterion's score per label-free candidate; with test labels, each criterion's Spearman
    rank correlation with test mIoU, what it would ship and its regret (mIoU points)."""
    names = list(report.proxy)
    width = max(12, *(len(n) + 1 for n in names))
    head = f"{'criterion':<12}" + "".join(f"{n[: width - 1]:>{width}}" for n in names)
    if report.labelled:
        head += f"{'spearman':>9}{'regret':>7}  ships"
    lines = [head]
    rows = [*CRITERIA, "test mIoU"] if report.labelled else list(CRITERIA)
    for criterion in rows:
        if criterion == "test mIoU":
            lines.append(f"{criterion:<12}" + "".join(f"{100 * report.test_miou[n]:>{width}.1f}" for n in names))
            continue
        line = f"{criterion:<12}" + "".join(f"{100 * report.proxy[n][criterion]:>{width}.2f}" for n in names)
        if report.labelled:
            q = report.criterion_quality(criterion)
            rho = f"{q.spearman:>9.2f}" if not math.isnan(q.spearman) else f"{'-':>9}"
            line += f"{rho}{100 * q.regret:>7.2f}  {q.pick}"
        lines.append(line + ("  <- judge" if criterion == report.criterion else ""))
    return "\n".join(lines)


def criterion_summary(reports: list[TargetReport]) -> dict[str, dict[str, float]]:
    """Per criterion, over the labelled studies: mean Spearman (where defined) and mean regret (points)."""
    labelled = [r for r in reports if r.labelled and r.proxy]
    summary = {}
    for criterion in CRITERIA:
        qualities = [r.criterion_quality(criterion) for r in labelled]
        rhos = [q.spearman for q in qualities if not math.isnan(q.spearman)]
        summary[criterion] = {
            "spearman": sum(rhos) / len(rhos) if rhos else math.nan,
            "regret": 100 * sum(q.regret for q in qualities) / len(qualities) if qualities else math.nan,
            "studies": float(len(qualities)),
        }
    return summary


def format_criterion_summary(reports: list[TargetReport]) -> str:
    summary = criterion_summary(reports)
    if not any(s["studies"] for s in summary.values()):
        return ""
    lines = ["label-free criteria over the labelled studies (regret: test mIoU points lost to the label-picked best)"]
    lines.append(f"{'criterion':<12}{'spearman':>9}{'regret':>8}")
    for criterion, s in summary.items():
        rho = f"{s['spearman']:>9.2f}" if not math.isnan(s["spearman"]) else f"{'-':>9}"
        lines.append(f"{criterion:<12}{rho}{s['regret']:>8.2f}")
    return "\n".join(lines)


def format_table(reports: list[TargetReport]) -> str:
    """Per target: a row per candidate. With test labels: mIoU, per-class IoU and the gap closed;
    without: the proxy metrics only (no mIoU column to fake). Then every criterion, what the judge picks and why."""
    lines = []
    for r in reports:
        candidates = list(r.labels_used)
        if r.labelled:
            classes = list(next(iter(r.test_iou.values())))
            lines.append(f"{r.domain}: target test labels score every candidate")
            lines.append(
                f"{'candidate':<18}{'labels':>7}{'test mIoU':>10}"
                + "".join(f"{c[:10]:>11}" for c in classes)
                + f"{'gap closed':>11}{'proxy':>7}{'estimated (no labels)':>24}"
            )
            for c in candidates:
                if c not in r.test_miou:
                    continue
                gap = r.gap_closed(c)
                shown = f"{'> oracle':>11}" if c in r.above_oracle else f"{100 * gap:>10.0f}%"
                lines.append(
                    f"{c:<18}{r.labels_used[c]:>7}{100 * r.test_miou[c]:>10.1f}"
                    + "".join(f"{100 * r.test_iou[c][k]:>11.1f}" for k in classes)
                    + (shown if not math.isnan(gap) else f"{'-':>11}")
                    + (f"{100 * r.proxy[c]['score']:>7.1f}" if c in r.proxy else f"{'-':>7}")
                    + (f"{estimate_text(r.estimate[c]):>24}" if c in r.estimate else f"{'-':>24}")
                )
            if r.above_oracle:
                lines.append(
                    f"note: {', '.join(r.above_oracle)} score above the oracle ({100 * r.test_miou['oracle']:.1f}), "
                    "so the oracle is no upper reference here and their gap shares are not shown"
                )
        else:
            lines.append(f"{r.domain}: no target labels read; candidates are judged by the unsupervised proxy")
            for c, found in r.estimate.items():
                lines.append(f"  {c:<18} estimated target mIoU {estimate_text(found)} (90% interval, no labels)")
        if r.scale:
            lines.append(f"target scale picked without labels: short side {int(r.scale['short_side'])}")
        lines.append(criterion_table(r))
        lines.append(f"judge pick: {r.proxy_choice} ({r.proxy_reason})")
        if r.label_choice is not None:
            lines.append(f"val labels would pick: {r.label_choice}")
        if r.labelled:
            lines.append(
                f"on test, the judge pick scores {100 * r.test_miou[r.proxy_choice]:.1f} mIoU against "
                f"source-only {100 * r.test_miou[SOURCE]:.1f}"
            )
        lines.append("")
    summary = format_criterion_summary(reports)
    return "\n".join([*lines, summary] if summary else lines).rstrip()


def write_outputs(reports: list[TargetReport], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    results.write_text(
        json.dumps(
            [
                {
                    **asdict(r),
                    "gap_closed": {c: r.gap_closed(c) for c in r.test_miou if c not in r.above_oracle},
                    "above_oracle": r.above_oracle,
                    "proxy_choice": r.proxy_choice,
                    "proxy_reason": r.proxy_reason,
                    "label_choice": r.label_choice,
                    "criteria_quality": {c: asdict(r.criterion_quality(c)) for c in CRITERIA} if r.labelled else {},
                }
                for r in reports
            ],
            indent=2,
        )
    )
    # results.json stays one row per target; the pooled criterion quality has a file of its own
    (out / "criteria.json").write_text(json.dumps(criterion_summary(reports), indent=2))
    labelled = all(r.labelled for r in reports)
    candidates = list(dict.fromkeys(c for r in reports for c in (r.test_miou if labelled else r.proxy)))
    series = {
        c: {
            r.domain: 100 * (r.test_miou[c] if labelled else r.proxy[c]["score"])
            for r in reports
            if c in (r.test_miou if labelled else r.proxy)
        }
        for c in candidates
    }
    title = "target test mIoU by candidate" if labelled else "val proxy score by candidate (no target labels)"
    chart = bar_chart_png(out / "adapt_miou.png", series, title=title)
    return {"results": results, "criteria": out / "criteria.json", "chart": chart}
