"""`raysegment adapt`: how far each adaptation method takes a source model on each target domain.

Per target: the source-only model, every label-free method (zero target labels), few-shot
fine-tuning with k labelled images, and the oracle fine-tuned on all target labels; test mIoU
and the share of the source-only -> oracle gap each one closes. It also checks the do-no-harm
rule: which candidate (the source model or a label-free result) the unsupervised proxy picks on
the val images, against the pick that the val labels would make.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from raysegment.config import METHODS, parse_config
from raysegment.data import UnlabelledView, open_split
from raysegment.engine import evaluate
from raysegment.engine.adapt import adapt
from raysegment.engine.proxies import proxy_scores
from raysegment.models import load_model
from raysegment.viz import bar_chart_png

LABEL_FREE = tuple(m for m in METHODS if m != "finetune")


@dataclass
class TargetReport:
    domain: str
    source_only: float
    oracle: float | None
    methods: dict[str, float] = field(default_factory=dict)      # label-free method -> test mIoU
    few_shot: dict[int, float] = field(default_factory=dict)      # k -> test mIoU
    proxy: dict[str, float] = field(default_factory=dict)         # candidate -> val proxy score
    val_miou: dict[str, float] = field(default_factory=dict)      # candidate -> val mIoU (for the check only)
    seconds: dict[str, float] = field(default_factory=dict)

    def gap_closed(self, miou: float) -> float:
        """(m - source) / (oracle - source); NaN without an oracle or without a gap."""
        if self.oracle is None or self.oracle - self.source_only <= 1e-9:
            return math.nan
        return (miou - self.source_only) / (self.oracle - self.source_only)

    @property
    def proxy_choice(self) -> str:
        return max(self.proxy, key=self.proxy.get)

    @property
    def label_choice(self) -> str:
        return max(self.val_miou, key=self.val_miou.get)


def method_config(base: dict, domain: str, method: str, out: Path, labelled: int | None = None) -> Any:
    run = json.loads(json.dumps(base))
    run["data"].update(domain=domain, labelled_limit=labelled)
    run["adapt"] = {**run.get("adapt", {}), "method": method}
    run["output_dir"] = str(out)
    return parse_config(run, f"adapt {domain} {method}")


def run_study(source: str | Path, data_root: str | Path, source_domain: str, targets: list[str],
              methods: tuple[str, ...] = LABEL_FREE, shots: tuple[int, ...] = (1, 5, 10), oracle: bool = True,
              out: str | Path = "adapt_out", epochs: dict[str, int] | None = None, lr: float = 1e-3,
              batch_size: int = 8, adapt_overrides: dict | None = None, log=print) -> list[TargetReport]:
    """Run the whole comparison in this process; writes `results.json` and PNG charts under `out`."""
    out = Path(out)
    epochs = {"tent": 2, "self_training": 8, "finetune": 8, **(epochs or {})}
    source_model, meta = load_model(source)
    base = {"data": {"root": str(data_root), "domain": source_domain},
            "model": {**meta.model.model_dump(mode="json"), "freeze_depth": 0,
                      "pretrained": {"source": "checkpoint", "uri": str(source)}},
            "optim": {"lr": lr, "batch_size": batch_size, "decay": 0.9},
            "adapt": {"source_domain": source_domain, **(adapt_overrides or {})}}
    quiet = lambda line: None  # noqa: E731 - per-epoch lines stay out of the table
    reports = []
    for domain in targets:
        test = open_split(data_root, domain, "test")
        val = open_split(data_root, domain, "val")
        eval_cfg = parse_config(base).eval
        report = TargetReport(domain, evaluate(source_model, test, eval_cfg).miou, None)
        report.proxy["source-only"] = proxy_scores(source_model, source_model, UnlabelledView(val),
                                                   meta.num_classes).score
        report.val_miou["source-only"] = evaluate(source_model, val, eval_cfg).miou
        for method in methods:
            start = time.perf_counter()
            cfg = method_config(base, domain, method, out / "runs" / domain / method)
            cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"epochs": epochs.get(method, 1)})})
            tuner = adapt(cfg, resume=False, progress=False, log=quiet)
            report.methods[method] = evaluate(tuner.deployable, test, cfg.eval).miou
            report.proxy[method] = tuner.score(val)["score"]
            report.val_miou[method] = evaluate(tuner.deployable, val, cfg.eval).miou
            report.seconds[method] = time.perf_counter() - start
            log(f"[adapt] {domain:<8} {method:<14} test mIoU {100 * report.methods[method]:5.1f} "
                f"(source-only {100 * report.source_only:.1f}), proxy {100 * report.proxy[method]:.1f} "
                f"vs source {100 * report.proxy['source-only']:.1f}, {report.seconds[method]:.0f} s")
        labelled = [*shots, None] if oracle else list(shots)
        for k in labelled:
            cfg = method_config(base, domain, "finetune", out / "runs" / domain / f"finetune_{k or 'all'}", k)
            cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={
                "epochs": epochs["finetune"], "batch_size": min(batch_size, k or batch_size)})})
            tuner = adapt(cfg, resume=False, progress=False, log=quiet)
            miou = evaluate(tuner.deployable, test, cfg.eval).miou
            if k is None:
                report.oracle = miou
            else:
                report.few_shot[k] = miou
            log(f"[adapt] {domain:<8} {'oracle' if k is None else f'{k}-shot':<14} test mIoU {100 * miou:5.1f}")
        reports.append(report)
    write_outputs(reports, out)
    return reports


def format_table(reports: list[TargetReport]) -> str:
    """mIoU per candidate and, in brackets, the share of the source-only -> oracle gap it closes."""
    columns = ["source-only", *reports[0].methods, *(f"{k}-shot" for k in reports[0].few_shot), "oracle"]
    lines = [f"{'domain':<9}" + "".join(f"{c:>20}" for c in columns)]
    for r in reports:
        values = [r.source_only, *r.methods.values(), *r.few_shot.values(), r.oracle]
        cells = []
        for v in values:
            if v is None:
                cells.append(f"{'-':>20}")
                continue
            gap = r.gap_closed(v)
            cells.append(f"{100 * v:>11.1f}" + (f" ({100 * gap:+4.0f}%)" if not math.isnan(gap) else " " * 8))
        lines.append(f"{r.domain:<9}" + "".join(cells))
    for method in reports[0].methods:
        gaps = [r.gap_closed(r.methods[method]) for r in reports]
        gaps = [g for g in gaps if not math.isnan(g)]
        if gaps:
            lines.append(f"mean gap closed by {method}: {100 * sum(gaps) / len(gaps):.0f}%")
    agree = sum(r.proxy_choice == r.label_choice for r in reports)
    lines.append(f"proxy picks what val labels pick on {agree}/{len(reports)} domains: "
                 + ", ".join(f"{r.domain}: proxy {r.proxy_choice} / labels {r.label_choice}" for r in reports))
    return "\n".join(lines)


def write_outputs(reports: list[TargetReport], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.json"
    results.write_text(json.dumps([{**asdict(r), "gap_closed": {m: r.gap_closed(v) for m, v in r.methods.items()},
                                    "proxy_choice": r.proxy_choice, "label_choice": r.label_choice}
                                   for r in reports], indent=2))
    series: dict[str, dict[str, float]] = {"source-only": {r.domain: 100 * r.source_only for r in reports}}
    for method in reports[0].methods:
        series[f"{method} (0 labels)"] = {r.domain: 100 * r.methods[method] for r in reports}
    for k in reports[0].few_shot:
        series[f"finetune {k} labels"] = {r.domain: 100 * r.few_shot[k] for r in reports}
    if all(r.oracle is not None for r in reports):
        series["oracle (all labels)"] = {r.domain: 100 * r.oracle for r in reports}
    chart = bar_chart_png(out / "adapt_miou.png", series, title="target test mIoU by adaptation method")
    return {"results": results, "chart": chart}
