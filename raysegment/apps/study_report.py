"""What a study found, per target: the scores of every candidate, the judge's pick and why, the
estimates without labels; and how it is shown (the table, `results.json`, the chart)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raysegment.config import (
    CRITERIA,
)
from raysegment.engine.criteria import (
    CriterionQuality,
    criterion_quality,
)
from raysegment.engine.policy import pick
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
