"""The real shift (DRIVE -> CHASE_DB1) adapted on Ray Train from a folder and from S3 through Ray
Data, same seed: the per-epoch losses, the judge's scores and the result's test mIoU of each.

A source model is trained on DRIVE in this process (EfficientNet-Lite0 with the bundled ImageNet
weights + FPN, short side 96), then each label-free method runs on 2 Ray Train workers of an
embedded 2-CPU Ray (0.5 CPU each, the rest for decode tasks): once with `data.root` the local
folder (DataLoader in each rank), once with it in a bucket of moto's S3 server on 127.0.0.1 (Ray
Data decode tasks). Prints a table and writes JSON with `--out`.

    python benchmarks/ingest_retina.py [--retina data/retina] [--methods tent self_training]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from bench_ingest import S3_ENV, start_s3  # noqa: E402

from raysegment.config import parse_config  # noqa: E402
from raysegment.data import open_split  # noqa: E402
from raysegment.engine.epochs import fit  # noqa: E402
from raysegment.engine.evaluate import evaluate  # noqa: E402
from raysegment.models.io import save_model
from raysegment.models.rebuild import load_model  # noqa: E402
from raysegment.models.weights_import import bundled_efficientnet_lite0, import_weights  # noqa: E402
from raysegment.storage import upload_tree  # noqa: E402


def train_source(retina: Path, out: Path, epochs: int) -> Path:
    weights, _, _ = import_weights(bundled_efficientnet_lite0(), "efficientnet_lite0", out / "lite0.safetensors")
    cfg = parse_config(
        {
            "data": {"root": str(retina), "domain": "drive", "resize": {"short_side": 96}},
            "model": {"pretrained": {"source": "file", "uri": str(weights)}, "decoder_channels": 32},
            "optim": {"epochs": epochs, "batch_size": 4, "lr": 2e-3},
            "output_dir": str(out / "source_run"),
        }
    )
    learner = fit(cfg, open_split(retina, "drive", "train"), resume=False, log=lambda line: None)
    return save_model(out / "source_model", learner.selected_model(), learner.meta)


def adapt_config(root: str, source: str, method: str, out: Path, epochs: int):
    adapt = {"method": method} | ({"source_domain": "drive"} if method == "self_training" else {})
    return parse_config(
        {
            "data": {"root": root, "domain": "chase", "resize": {"short_side": 96}},
            "model": {"pretrained": {"source": "checkpoint", "uri": source}, "decoder_channels": 32},
            "optim": {"epochs": epochs, "batch_size": 2, "lr": 1e-4, "select": "last"},
            "adapt": adapt,
            "scale": {"num_workers": 2, "cpus_per_worker": 0.5},
            "output_dir": str(out),
        }
    )


def losses(cfg) -> list[float]:
    lines = (Path(cfg.output_dir) / "progress.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retina", type=Path, default=Path(__file__).resolve().parents[1] / "data/retina")
    parser.add_argument("--methods", nargs="+", default=["tent", "self_training"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--source-epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import boto3
    import ray

    from raysegment.distributed.train import train_on_ray

    server, endpoint = start_s3()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        source = train_source(args.retina, work, args.source_epochs)
        print(f"source model trained on drive in {time.perf_counter() - t0:.0f} s", flush=True)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="retina")
        bucket = upload_tree(args.retina, "s3://retina/retina")
        ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False,
                 runtime_env={"env_vars": {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}})  # fmt: skip
        test = open_split(args.retina, "chase", "test")
        source_model, _ = load_model(source)
        base = parse_config({"data": {"root": str(args.retina)}})
        source_miou = evaluate(source_model, test, base.eval).miou
        for method in args.methods:
            for where, root in (("folder", str(args.retina)), ("s3", bucket)):
                cfg = adapt_config(root, str(source), method, work / f"{method}-{where}", args.epochs)
                result = train_on_ray(cfg, name=f"{method}-{where}")
                if result.model_dir is None:
                    raise SystemExit(f"{method} on {where} left no model in {result.storage_dir}")
                model, _ = load_model(result.model_dir)
                rows.append(
                    {
                        "method": method,
                        "data": where,
                        "losses": losses(cfg),
                        "proxy_score": result.metrics["score"],
                        "test_miou": evaluate(model, test, base.eval).miou,
                        "seconds": result.seconds,
                    }
                )
                r = rows[-1]
                print(f"{method:>14} {where:>6}: losses {', '.join(f'{v:.5f}' for v in r['losses'])}; proxy "
                      f"{100 * r['proxy_score']:.2f}; chase test mIoU {100 * r['test_miou']:.2f} "
                      f"({r['seconds']:.0f} s)", flush=True)  # fmt: skip
        ray.shutdown()
    server.stop()
    print(f"source-only chase test mIoU {100 * source_miou:.2f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ingest_retina.json").write_text(json.dumps({"source_miou": source_miou, "runs": rows}, indent=2))


if __name__ == "__main__":
    main()
