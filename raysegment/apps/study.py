"""`raysegment adapt`: how far each adaptation method takes a source model on each target domain.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raysegment.config import LABEL_FREE_METHODS, ResizeConfig, RunConfig, parse_config
from raysegment.data import open_split
from raysegment.engine.adapt import adapt
from raysegment.engine.evaluate import evaluate
from raysegment.engine.proxies import proxy_scores
from raysegment.models import load_model
from raysegment.viz import bar_chart_png

SOURCE = "source-only"


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

    def gap_closed(self, candidate: str) -> float:
        """(m - source) / (oracle - source) in test mIoU; NaN without labels, an oracle or a gap."""
        source, oracle = self.test_miou.get(SOURCE), self.test_miou.get("oracle")
        if source is None or oracle is None or oracle - source <= 1e-9 or candidate not in self.test_miou:
            return math.nan
        return (self.test_miou[candidate] - source) / (oracle - source)

    @property
    def proxy_choice(self) -> str:
        """The zero-label pick: the best proxy score; the source model unless a result beats it."""
        best = max(self.proxy, key=lambda c: (self.proxy[c]["score"], c == SOURCE))
        return best if self.proxy[best]["score"] > self.proxy[SOURCE]["score"] else SOURCE

    @property
    def proxy_reason(self) -> str:
        choice, source = self.proxy_choice, self.proxy[SOURCE]["score"]
        if choice == SOURCE:
            return (
                f"no label-free result beats the source model's proxy score {100 * source:.1f} "
                f"on the val images, so the source model stays"
            )
        return (
            f"{choice} has the best proxy score, {100 * self.proxy[choice]['score']:.1f} against the source "
            f"model's {100 * source:.1f} on the val images"
        )

    @property
    def label_choice(self) -> str | None:
        """What val labels would pick among the same zero-label candidates (None without val labels)."""
        candidates = {c: v for c, v in self.val_miou.items() if c in self.proxy}
        return max(candidates, key=lambda c: candidates[c]) if candidates else None


def study_config(
    source: str | Path,
    data_root: str | Path,
    source_domain: str,
    layout: str,
    resize: ResizeConfig | None,
    lr: float,
    batch_size: int,
    adapt_overrides: dict | None,
) -> RunConfig:
    """The base run every candidate starts from: the source model, at the working scale."""
    _, meta = load_model(source)
    return parse_config(
        {
            "data": {
                "root": str(data_root),
                "domain": source_domain,
                "layout": layout,
                "resize": resize.model_dump() if resize else None,
            },
            "model": {
                **meta.model.model_dump(mode="json"),
                "freeze_depth": 0,
                "pretrained": {"source": "checkpoint", "uri": str(source)},
            },
            "optim": {"lr": lr, "batch_size": batch_size, "decay": 0.9},
            "adapt": {"source_domain": source_domain, **(adapt_overrides or {})},
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
) -> RunConfig:
    """One candidate's run: typed copies of the base, never edited dicts."""
    few_shot = method == "finetune" and labelled is not None
    return base.model_copy(
        update={
            "data": base.data.model_copy(
                update={"domain": domain, "labelled_limit": labelled, "unlabelled": unlabelled and method != "finetune"}
            ),
            "optim": base.optim.model_copy(update={"epochs": epochs, "backbone_lr_scale": 0.1 if few_shot else 1.0}),
            "adapt": base.adapt.model_copy(update={"method": method, "source_replay": few_shot}),
            "output_dir": str(out),
        }
    )


def run_study(
    source: str | Path,
    data_root: str | Path,
    source_domain: str,
    targets: list[str],
    methods: tuple[str, ...] = LABEL_FREE_METHODS,
    shots: tuple[int, ...] = (1, 5, 10),
    oracle: bool = True,
    out: str | Path = "adapt_out",
    epochs: dict[str, int] | None = None,
    lr: float = 1e-3,
    batch_size: int = 8,
    resize: ResizeConfig | None = None,
    unlabelled: bool = False,
    layout: str = "raysegment",
    adapt_overrides: dict | None = None,
    log: Callable[[str], Any] = print,
) -> list[TargetReport]:
    """Run the whole comparison in this process; writes `results.json` and a PNG chart under `out`."""
    out = Path(out)
    epochs = {"tent": 2, "self_training": 8, "finetune": 8, "oracle": 8, **(epochs or {})}
    source_model, meta = load_model(source)
    resize = resize or meta.resize  # by default, the scale the source model was trained at
    base = study_config(source, data_root, source_domain, layout, resize, lr, batch_size, adapt_overrides)
    d = base.data
    quiet = lambda line: None  # noqa: E731 - per-epoch lines stay out of the table
    reports = []
    for domain in targets:
        val_images = open_split(d.root, domain, d.val_split, layout, unlabelled=True)
        test = None if unlabelled else open_split(d.root, domain, d.test_split, layout)
        has_labels = test is not None and test.labelled_count > 0
        val = None if unlabelled else open_split(d.root, domain, d.val_split, layout)
        val_labelled = val is not None and val.labelled_count > 0
        report = TargetReport(domain, has_labels)

        def record(candidate: str, model: Any, labels: int, seconds: float, label_free: bool) -> None:
            report.labels_used[candidate] = labels
            report.seconds[candidate] = seconds
            if label_free:
                scores = proxy_scores(
                    model,
                    source_model,
                    val_images,
                    meta.num_classes,
                    base.adapt.proxy_confidence,
                    batch_size=base.eval.batch_size,
                    resize=resize,
                )
                report.proxy[candidate] = {**scores.as_metrics(), "score": scores.score}
            if val is not None and val_labelled and label_free:
                report.val_miou[candidate] = evaluate(model, val, base.eval, resize=resize).miou
            if test is not None and has_labels:
                result = evaluate(model, test, base.eval, resize=resize)
                report.test_miou[candidate], report.test_iou[candidate] = result.miou, result.per_class
            log(candidate_line(report, candidate))

        record(SOURCE, source_model, 0, 0.0, label_free=True)
        for method in methods:
            start = time.perf_counter()
            cfg = candidate_config(
                base, domain, out / "runs" / domain / method, method, epochs.get(method, 1), unlabelled=True
            )
            result = adapt(cfg, resume=False, progress=False, log=quiet)
            record(method, result.model, 0, time.perf_counter() - start, label_free=True)
        train = None if unlabelled else open_split(d.root, domain, d.train_split, layout)
        available = train.labelled_count if train is not None else 0
        for k in [*shots, None] if oracle else list(shots):
            name = "oracle" if k is None else f"{k}-shot"
            if available == 0 or not val_labelled or (k is not None and k > available):
                log(
                    f"[adapt] {domain:<8} {name:<14} skipped: needs {k or 'all'} labelled train images and "
                    f"labelled val images ({available} labelled train images)"
                )
                continue
            start = time.perf_counter()
            cfg = candidate_config(
                base,
                domain,
                out / "runs" / domain / name.replace("-", "_"),
                "finetune",
                epochs["oracle" if k is None else "finetune"],
                labelled=k,
            )
            result = adapt(cfg, resume=False, progress=False, log=quiet)
            record(name, result.model, k or available, time.perf_counter() - start, label_free=False)
        log(f"[adapt] {domain:<8} the proxy picks {report.proxy_choice}: {report.proxy_reason}")
        reports.append(report)
    write_outputs(reports, out)
    return reports


def candidate_line(report: TargetReport, candidate: str) -> str:
    line = f"[adapt] {report.domain:<8} {candidate:<14}"
    if candidate in report.test_miou:
        line += f" test mIoU {100 * report.test_miou[candidate]:5.1f}"
    if candidate in report.proxy:
        line += f" proxy {100 * report.proxy[candidate]['score']:5.1f}"
    return line + f" ({report.seconds[candidate]:.0f} s)"


def format_table(reports: list[TargetReport]) -> str:
    """Per target: a row per candidate. With test labels: mIoU, per-class IoU and the gap closed;
    without: the proxy metrics only (no mIoU column to fake). Then what the proxy picks and why."""
    lines = []
    for r in reports:
        candidates = list(r.labels_used)
        if r.labelled:
            classes = list(next(iter(r.test_iou.values())))
            lines.append(f"{r.domain}: target test labels score every candidate")
            lines.append(
                f"{'candidate':<14}{'labels':>7}{'test mIoU':>10}"
                + "".join(f"{c[:10]:>11}" for c in classes)
                + f"{'gap closed':>11}{'proxy':>7}"
            )
            for c in candidates:
                gap = r.gap_closed(c)
                lines.append(
                    f"{c:<14}{r.labels_used[c]:>7}{100 * r.test_miou[c]:>10.1f}"
                    + "".join(f"{100 * r.test_iou[c][k]:>11.1f}" for k in classes)
                    + (f"{100 * gap:>10.0f}%" if not math.isnan(gap) else f"{'-':>11}")
                    + (f"{100 * r.proxy[c]['score']:>7.1f}" if c in r.proxy else f"{'-':>7}")
                )
        else:
            lines.append(f"{r.domain}: no target labels read; candidates are judged by the unsupervised proxy")
            lines.append(f"{'candidate':<14}{'proxy score':>12}{'consistency':>12}{'entropy':>9}{'agreement':>10}")
            for c in r.proxy:
                p = r.proxy[c]
                lines.append(
                    f"{c:<14}{100 * p['score']:>12.1f}{100 * p['proxy_consistency']:>12.1f}"
                    f"{p['proxy_entropy']:>9.3f}{100 * p['proxy_agreement']:>10.1f}"
                )
        lines.append(f"proxy pick: {r.proxy_choice} ({r.proxy_reason})")
        if r.label_choice is not None:
            lines.append(f"val labels would pick: {r.label_choice}")
        if r.labelled:
            lines.append(
                f"on test, the proxy pick scores {100 * r.test_miou[r.proxy_choice]:.1f} mIoU against "
                f"source-only {100 * r.test_miou[SOURCE]:.1f}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


def write_outputs(reports: list[TargetReport], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    results.write_text(
        json.dumps(
            [
                {
                    **asdict(r),
                    "gap_closed": {c: r.gap_closed(c) for c in r.test_miou},
                    "proxy_choice": r.proxy_choice,
                    "proxy_reason": r.proxy_reason,
                    "label_choice": r.label_choice,
                }
                for r in reports
            ],
            indent=2,
        )
    )
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
    return {"results": results, "chart": chart}
