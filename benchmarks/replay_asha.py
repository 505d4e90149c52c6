"""Replay Ray Tune's ASHA on the recorded curves of a full-budget search (`bench_tune.py --curves`):
which grace period, reduction factor and bracket count would have kept the full search's winner,
at what share of its epochs. Ray's own `ASHAScheduler` makes every stop decision; trials run
`--slots` at a time in trial order, one epoch per step (2 CPUs, trials of equal speed). Ray draws
each trial's bracket at random, so a setting with several brackets is averaged over `--draws`
seeds. Also: how well each epoch's ranking of the trials predicts their final ranking (Spearman),
which is what successive halving bets on, and PNGs of the curves.

    python benchmarks/replay_asha.py CURVES.json [--slots 2] [--draws 5] [--plot FOLDER]

A replay is exact only for random draws (the full search and ASHA then sample the same trials);
a real run also differs where trials of unequal speed reach the rungs in another order.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from raysegment.viz import curves_png


def rank_correlation(a: list[float], b: list[float]) -> float:
    """Spearman's rho (ties broken by order: scores here are floats)."""
    ranks = [np.argsort(np.argsort(x)).astype(np.float64) for x in (a, b)]
    return float(np.corrcoef(ranks[0], ranks[1])[0, 1])


def replay(
    curves: dict[str, list[float]], grace: int, rf: float, brackets: int, slots: int, seed: int
) -> tuple[float, int]:
    """(best score reached, epochs spent) had ASHA run this search."""
    np.random.seed(seed)  # Ray draws brackets from numpy's global generator
    max_t = max(len(c) for c in curves.values())
    # Fed stand-in trials (the scheduler reads only their trial_id) and no controller: untyped on purpose.
    asha: Any = ASHAScheduler(
        time_attr="epoch", metric="score", mode="max", max_t=max_t, grace_period=grace,
        reduction_factor=rf, brackets=brackets,
    )  # fmt: skip
    waiting = [SimpleNamespace(trial_id=t) for t in sorted(curves)]
    running: dict[str, int] = {}
    best, spent = -np.inf, 0
    while waiting or running:
        while waiting and len(running) < slots:
            trial = waiting.pop(0)
            asha.on_trial_add(None, trial)
            running[trial.trial_id] = 0
        for trial_id in sorted(running):
            epoch = running[trial_id] = running[trial_id] + 1
            score = curves[trial_id][epoch - 1]
            best, spent = max(best, score), spent + 1
            action = asha.on_trial_result(None, SimpleNamespace(trial_id=trial_id), {"epoch": epoch, "score": score})
            if action == TrialScheduler.STOP or epoch == len(curves[trial_id]):
                asha.on_trial_remove(None, SimpleNamespace(trial_id=trial_id))
                del running[trial_id]
    return float(best), spent


def plot(data: dict[str, dict[str, list[float]]], folder: Path) -> list[Path]:
    """One PNG of every trial's curve per domain (`raysegment.viz.curves_png`, as a Tune search draws them)."""
    paths = []
    for domain, curves in data.items():
        winner = max(curves, key=lambda t: max(curves[t]))
        best = 100 * max(curves[winner])
        title = f"{domain}: {len(curves)} trials; the full search's best is {winner[-5:]} ({best:.1f}%)"
        series = {trial_id[-5:]: [100 * v for v in curve] for trial_id, curve in sorted(curves.items())}
        paths.append(curves_png(folder / f"{domain}.png", series, title, "val mIoU (%)"))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("curves", type=Path)
    parser.add_argument("--slots", type=int, default=2, help="trials at once")
    parser.add_argument("--draws", type=int, default=5, help="bracket draws averaged when brackets > 1")
    parser.add_argument("--plot", type=Path, help="a folder for the curves, one PNG per domain")
    args = parser.parse_args()
    data = json.loads(args.curves.read_text())
    for domain, curves in data.items():
        full_best = max(max(c) for c in curves.values())
        full_epochs = sum(len(c) for c in curves.values())
        final = [max(curves[t]) for t in sorted(curves)]
        rho = [
            rank_correlation([curves[t][e] for t in sorted(curves)], final)
            for e in range(min(len(c) for c in curves.values()))
        ]
        print(f"{domain}: {len(curves)} trials, full search best {100 * full_best:.1f}% in {full_epochs} epochs")
        print(
            "  rank correlation of epoch k's scores with the trials' final best: " + " ".join(f"{r:+.2f}" for r in rho)
        )
        print(f"  {'grace':>5} {'rf':>3} {'brackets':>8} {'best':>6} {'vs full':>7} {'epochs':>6} {'ratio':>5}")
        for grace, rf, brackets in itertools.product((1, 2, 3), (2, 3, 4), (1, 2, 3)):
            runs = [
                replay(curves, grace, rf, brackets, args.slots, s) for s in range(args.draws if brackets > 1 else 1)
            ]
            best, epochs = float(np.mean([r[0] for r in runs])), float(np.mean([r[1] for r in runs]))
            met = "  goal met" if full_best - best <= 0.01 and epochs / full_epochs <= 0.40 else ""
            print(
                f"  {grace:>5} {rf:>3g} {brackets:>8} {100 * best:>5.1f}% {100 * (best - full_best):>+7.1f} "
                f"{epochs:>6.1f} {epochs / full_epochs:>5.2f}{met}"
            )
    if args.plot:
        print("plots: " + ", ".join(str(p) for p in plot(data, args.plot)))


if __name__ == "__main__":
    main()
