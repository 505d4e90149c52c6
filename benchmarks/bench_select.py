"""Few labels, chosen well: k-shot test mIoU and the share of the source -> oracle gap closed for
k labels chosen `active` (engine.selection), `random` (mean and spread over seeds) and `first`
(file order), with the few-shot recipe (fine-tune + source replay) and with self-training on the
k labels beside the pseudo-labelled rest; and the label-free estimate of target mIoU against the
truth for every candidate (MAE, and how often its 90% interval holds the test mIoU).

    python benchmarks/bench_select.py [--targets fog night rain sensor texture] [--shots 2 5 10]
        [--seeds 3] [--retina data/retina --retina-source MODEL] [--out bench_out/select]

One process, no Ray. Writes `OUT/select.json`, `OUT/select.md` (the tables) and `OUT/select.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from common import synthetic_source

from raysegment.apps.study import run_study
from raysegment.apps.study_config import StudyConfig
from raysegment.apps.study_report import SOURCE, TargetReport
from raysegment.config import SYNTH_DOMAINS, ResizeConfig
from raysegment.data import synth
from raysegment.viz import bar_chart_png


def gap(report: TargetReport, candidate: str) -> float:
    """The share of the source -> oracle gap closed (NaN without a gap or above the oracle)."""
    value = report.gap_closed(candidate)
    return math.nan if candidate in report.above_oracle else value


def study(source: Path, root: Path, source_domain: str, target: str, args, out: Path, **kw) -> TargetReport:
    cfg = StudyConfig(
        source=str(source),
        data_root=str(root),
        source_domain=source_domain,
        targets=[target],
        out=str(out),
        epochs={"self_training": args.st_epochs, "finetune": args.ft_epochs, "oracle": 3 * args.ft_epochs},
        **kw,
    )
    (report,) = run_study(cfg, log=lambda line: None)
    return report


def bench_target(source: Path, root: Path, source_domain: str, target: str, args, out: Path, resize=None) -> dict:
    shots, start = tuple(args.shots), time.perf_counter()
    run = partial(
        study, source, root, source_domain, target, args, resize=resize, lr=args.lr, batch_size=args.batch_size
    )
    active = run(out / target / "active", shots=shots, select="active")
    first = run(out / target / "first", methods=(), shots=shots, oracle=False, select="first")
    randoms = [
        run(out / target / f"random{seed}", methods=(), shots=shots, oracle=False, select="random", select_seed=seed)
        for seed in range(args.seeds)
    ]
    rows: dict[str, dict] = {"active": {}, "first": {}, "random": {}, "active+st": {}}
    for k in shots:
        rows["active"][k] = active.test_miou.get(f"{k}-shot")
        rows["active+st"][k] = active.test_miou.get(f"{k}-shot self-training")
        rows["first"][k] = first.test_miou.get(f"{k}-shot")
    for k in shots:
        values = [r.test_miou[f"{k}-shot"] for r in randoms if f"{k}-shot" in r.test_miou]
        rows["random"][k] = {"mean": statistics.mean(values), "spread": statistics.pstdev(values), "runs": values}
    source_miou, oracle = active.test_miou[SOURCE], active.test_miou.get("oracle")
    estimates = [
        {"target": target, "candidate": c, "truth": active.test_miou[c], **e}
        for c, e in active.estimate.items()
        if c in active.test_miou
    ]
    return {
        "target": target,
        "source_only": source_miou,
        "oracle": oracle,
        "zero_label_self_training": active.test_miou.get("self_training"),
        "rows": rows,
        "estimates": estimates,
        "selected": active.selected,
        "seconds": time.perf_counter() - start,
    }


def share(value: float | None, source: float, oracle: float | None) -> str:
    if value is None or oracle is None or oracle - source <= 1e-9:
        return "-"
    closed = (value - source) / (oracle - source)
    return "> oracle" if closed > 1 else f"{100 * closed:.0f}%"


def tables(results: list[dict], shots: tuple[int, ...]) -> str:
    lines = ["## k-shot test mIoU (gap closed), by how the k images were chosen", ""]
    head = "| target | source | oracle | 0-label ST | " + " | ".join(
        f"{k} {w}" for k in shots for w in ("first", "random", "active", "active+ST")
    )
    lines += [head + " |", "|" + "---|" * (4 + 4 * len(shots))]
    for r in results:
        s, o = r["source_only"], r["oracle"]
        cells = [r["target"], f"{100 * s:.1f}", f"{100 * o:.1f}" if o else "-"]
        st = r["zero_label_self_training"]
        cells.append(f"{100 * st:.1f} ({share(st, s, o)})" if st is not None else "-")
        for k in shots:
            rnd = r["rows"]["random"][k]
            for name in ("first", "random", "active", "active+st"):
                if name == "random":
                    cells.append(f"{100 * rnd['mean']:.1f}±{100 * rnd['spread']:.1f} ({share(rnd['mean'], s, o)})")
                else:
                    v = r["rows"][name][k]
                    cells.append(f"{100 * v:.1f} ({share(v, s, o)})" if v is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    estimates = [e for r in results for e in r["estimates"]]
    if estimates:
        errors = [abs(e["miou"] - e["truth"]) for e in estimates]
        held = [e["low"] <= e["truth"] <= e["high"] for e in estimates]
        lines += ["", "## Estimated target mIoU without labels against test mIoU", ""]
        lines += ["| target | candidate | truth | estimate [90% interval] | error |", "|---|---|---|---|---|"]
        for e in estimates:
            lines.append(
                f"| {e['target']} | {e['candidate']} | {100 * e['truth']:.1f} | {100 * e['miou']:.1f} "
                f"[{100 * e['low']:.1f}, {100 * e['high']:.1f}] | {100 * (e['miou'] - e['truth']):+.1f} |"
            )
        lines.append("")
        lines.append(
            f"MAE {100 * statistics.mean(errors):.1f} mIoU points over {len(errors)} candidates; the interval "
            f"holds the truth for {sum(held)} of {len(held)} ({100 * sum(held) / len(held):.0f}%, nominal 90%)"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="*", default=list(SYNTH_DOMAINS[1:]))
    p.add_argument("--shots", nargs="+", type=int, default=[2, 5, 10])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--st-epochs", type=int, default=3)
    p.add_argument("--ft-epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--retina", help="a raysegment data import of DRIVE and CHASE_DB1 (data/retina)")
    p.add_argument("--retina-source", help="a model trained on its drive domain")
    p.add_argument("--retina-short-side", type=int, default=256)
    p.add_argument("--out", default="bench_out/select")
    args = p.parse_args()
    torch.set_num_threads(2)
    out = Path(args.out)
    results = []
    if args.targets:
        root = synth.generate(out / "data", ("clear", *args.targets), args.images, args.height, args.width, seed=0)
        source = synthetic_source(root, out, args.source_epochs)
        for target in args.targets:
            results.append(bench_target(source, root, "clear", target, args, out))
            print(tables(results[-1:], tuple(args.shots)), flush=True)
    if args.retina and args.retina_source:
        resize = ResizeConfig(short_side=args.retina_short_side)
        results.append(bench_target(Path(args.retina_source), Path(args.retina), "drive", "chase", args, out, resize))
    text = tables(results, tuple(args.shots))
    print(text)
    (out / "select.md").write_text(text + "\n")
    (out / "select.json").write_text(json.dumps(results, indent=1, default=float))
    k = max(args.shots)
    series = {
        name: {
            r["target"]: 100 * (r["rows"][name][k]["mean"] if name == "random" else (r["rows"][name][k] or 0))
            for r in results
        }
        for name in ("first", "random", "active", "active+st")
    }
    bar_chart_png(out / "select.png", series, title=f"{k}-shot test mIoU by how the {k} images were chosen")


if __name__ == "__main__":
    main()
