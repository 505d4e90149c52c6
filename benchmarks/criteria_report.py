"""How well each label-free criterion ranks adaptation candidates, over every study at once.

Reads the `results.json` of any number of `raysegment compare` / `bench_adapt.py` runs (synthetic
targets and the real retina shift alike), prints per criterion the mean Spearman correlation with
test mIoU and the mean regret (test mIoU points lost to the label-picked best) over all labelled
studies, and draws the regret per study and criterion as a PNG.

    python benchmarks/criteria_report.py bench_out/adapt/results.json runs/retina_study/results.json \\
        [--png criteria_regret.png]
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields
from pathlib import Path

from raysegment.apps.study_report import TargetReport, criterion_summary
from raysegment.config import CRITERIA
from raysegment.viz import bar_chart_png


def load_reports(path: Path) -> list[TargetReport]:
    names = {f.name for f in fields(TargetReport)}
    rows = [r for r in json.loads(path.read_text()) if "domain" in r]
    return [TargetReport(**{k: v for k, v in r.items() if k in names}) for r in rows]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", type=Path)
    p.add_argument("--png", type=Path, default=Path("criteria_regret.png"))
    args = p.parse_args()
    reports = [r for path in args.results for r in load_reports(path) if r.labelled and r.proxy]
    seen: dict[str, int] = {}
    for r in reports:  # the same target in two studies (say, two scales) gets two names
        seen[r.domain] = seen.get(r.domain, 0) + 1
        r.domain = r.domain if seen[r.domain] == 1 else f"{r.domain}#{seen[r.domain]}"
    print(f"{len(reports)} labelled studies: {', '.join(r.domain for r in reports)}")
    print(f"{'criterion':<12}{'spearman':>9}{'regret':>8}   per study: regret (pick)")
    for criterion, s in criterion_summary(reports).items():
        rho = f"{s['spearman']:>9.2f}" if not math.isnan(s["spearman"]) else f"{'-':>9}"
        picks = ", ".join(
            f"{r.domain} {100 * q.regret:.1f} ({q.pick})" for r in reports for q in [r.criterion_quality(criterion)]
        )
        print(f"{criterion:<12}{rho}{s['regret']:>8.2f}   {picks}")
    regrets = {c: {r.domain: 100 * r.criterion_quality(c).regret for r in reports} for c in CRITERIA}
    bar_chart_png(args.png, regrets, title="regret per criterion (test mIoU points)", ylabel="regret (points)")
    print(f"chart {args.png}")


if __name__ == "__main__":
    main()
