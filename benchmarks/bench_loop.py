"""One `raysegment loop` turn per shifted domain, checked against the labels the loop never sees:
production = the source model registered for the target domain, traffic = the target's train
images (captured through the traffic store), shadow decision offline (`shadow_images: 0`, the
held-back captured images). Reported per domain: the loop's decision and reason, its stage
timings, and test mIoU (labels) of production and of the loop's best candidate, so a promotion
can be checked to be right and a refusal to be safe.

    python benchmarks/bench_loop.py [--targets fog night] [--source runs/bench_continual/source_model]
    python benchmarks/bench_loop.py --retina data/retina --retina-source runs/retina_source/model
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from raysegment.config import EvalConfig, LoopConfig
from raysegment.data import files, open_split
from raysegment.distributed.closed_loop import run_loop
from raysegment.engine.evaluate import evaluate
from raysegment.models.rebuild import load_model
from raysegment.registry import Registry
from raysegment.registry.traffic import TrafficStore


def one_turn(source_dir: Path, root: Path, domain: str, cfg: LoopConfig, work: Path) -> dict:
    reg = Registry(work / f"registry-{domain}")
    model, meta = load_model(source_dir)
    reg.register(domain, model, meta)
    reg.set_alias(domain, 1, "production")
    traffic = TrafficStore(reg.uri)
    for path, _ in open_split(root, domain, "train").samples:
        traffic.capture(domain, files.read(path), files.name(path).rsplit(".", 1)[-1])
    outcome = run_loop(reg.uri, domain, cfg, str(work), log=lambda line: None)
    test = open_split(root, domain, "test").labelled()
    scored = {"production": evaluate(model, test, EvalConfig(), resize=meta.resize).miou}  # at its working scale
    if outcome.candidate is not None:
        candidate = reg.load(f"{domain}@{outcome.candidate}")[0]
        scored["candidate"] = evaluate(candidate, test, EvalConfig(), resize=meta.resize).miou
    return {"outcome": outcome, "test_miou": scored}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", nargs="*", default=["fog", "night", "rain", "sensor", "texture"])
    p.add_argument("--data", default="runs/bench_continual/data", help="synthetic domains (bench_continual's)")
    p.add_argument("--source", default="runs/bench_continual/source_model")
    p.add_argument("--retina")
    p.add_argument("--retina-source")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(2)
    cfg = LoopConfig(epochs=args.epochs, shadow_images=0, min_images=4)
    runs = [(Path(args.source), Path(args.data), t) for t in args.targets if Path(args.source).is_dir()]
    if args.retina and args.retina_source:
        runs.append((Path(args.retina_source), Path(args.retina), "chase"))
    rows = [
        "| domain | decision | production proxy | best proxy (method) | production test mIoU "
        "| candidate test mIoU | export / search / register / decide s |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for source_dir, root, domain in runs:
            result = one_turn(source_dir, root, domain, cfg, Path(tmp))
            o, miou = result["outcome"], result["test_miou"]
            best = max(o.scores, key=lambda n: o.scores[n][0] - o.scores[n][1])
            cand = f"{100 * miou['candidate']:.1f}" if "candidate" in miou else "-"
            t = [o.timings.get(stage, 0.0) for stage in ("freeze", "search", "register", "decide")]
            rows.append(
                f"| {domain} | {'promoted' if o.promoted else 'refused'} | {100 * o.scores[best][1]:.1f} | "
                f"{100 * o.scores[best][0]:.1f} ({best}) | {100 * miou['production']:.1f} | {cand} | "
                + " / ".join(f"{v:.1f}" for v in t)
                + " |"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
