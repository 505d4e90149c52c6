"""`active-novel` against `active`, `random` and `first`: the k-shot rows of `bench_select` with the
source-distance term (`engine.selection.source_novelty`), on the same data, source and recipe as a
finished `bench_select` run, whose `select.json` gives the other rows.

    python benchmarks/bench_select_novel.py --select-out bench_out/select \
        [--retina data/retina --retina-source MODEL --retina-short-side 320] [--out bench_out/novel]

One process, no Ray. Writes `OUT/novel.json` and `OUT/novel.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from bench_select import study

from raysegment.config import ResizeConfig


def novel_rows(source: Path, root: Path, source_domain: str, target: str, args, resize=None) -> dict[int, float]:
    report = study(
        source,
        root,
        source_domain,
        target,
        args,
        Path(args.out) / target,
        methods=(),
        shots=tuple(args.shots),
        oracle=False,
        select="active-novel",
        resize=resize,
        lr=args.lr,
        batch_size=args.batch_size,
    )
    return {k: report.test_miou[f"{k}-shot"] for k in args.shots}


def table(earlier: list[dict], novel: dict[str, dict[int, float]], shots: list[int]) -> str:
    head = "| target | k | first | random | active | active-novel | novel - random mean (spread) |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in earlier:
        if r["target"] not in novel:
            continue
        for k in shots:
            rows = r["rows"]
            rnd = rows["random"][str(k)]
            new = novel[r["target"]][k]
            lines.append(
                f"| {r['target']} | {k} | {100 * rows['first'][str(k)]:.1f} | {100 * rnd['mean']:.1f}±"
                f"{100 * rnd['spread']:.1f} | {100 * rows['active'][str(k)]:.1f} | {100 * new:.1f} | "
                f"{100 * (new - rnd['mean']):+.1f} ({100 * rnd['spread']:.1f}) |"
            )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--select-out", required=True, help="a finished bench_select --out folder")
    p.add_argument("--shots", nargs="+", type=int, default=[2, 5, 10])
    p.add_argument("--st-epochs", type=int, default=3)
    p.add_argument("--ft-epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--retina")
    p.add_argument("--retina-source")
    p.add_argument("--retina-short-side", type=int, default=320)
    p.add_argument("--out", default="bench_out/novel")
    args = p.parse_args()
    torch.set_num_threads(2)
    done = Path(args.select_out)
    earlier = json.loads((done / "select.json").read_text())
    novel: dict[str, dict[int, float]] = {}
    for r in earlier:
        if r["target"] == "chase":
            if args.retina and args.retina_source:
                resize = ResizeConfig(short_side=args.retina_short_side)
                novel["chase"] = novel_rows(Path(args.retina_source), Path(args.retina), "drive", "chase", args, resize)
        else:
            novel[r["target"]] = novel_rows(done / "source_model", done / "data", "clear", r["target"], args)
        print(r["target"], novel.get(r["target"]), flush=True)
    text = table(earlier, novel, args.shots)
    below = [
        (r["target"], k)
        for r in earlier
        if r["target"] in novel
        for k in args.shots
        if novel[r["target"]][k] < r["rows"]["random"][str(k)]["mean"] - r["rows"]["random"][str(k)]["spread"]
    ]
    summary = (
        f"\nactive-novel below random's mean by more than its spread in {len(below)} of "
        f"{len(novel) * len(args.shots)} cells: {below}; mean over cells: active-novel "
        f"{100 * statistics.mean(v for t in novel.values() for v in t.values()):.1f}"
    )
    print(text + summary)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "novel.md").write_text(text + summary + "\n")
    (Path(args.out) / "novel.json").write_text(json.dumps(novel, indent=1))


if __name__ == "__main__":
    main()
