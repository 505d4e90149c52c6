"""Concurrent registrations and promotions on a folder and on S3 (moto's server on 127.0.0.1,
single-threaded so each conditional write is one step, as on S3).

N processes x M registrations of one domain must end as versions 1..N*M, none lost or doubled;
then N processes x K alias moves must leave every alias and all N*K history records. Prints the
counts and the wall time of each phase per backend.

    python benchmarks/bench_registry.py [--procs 8] [--each 10] [--moves 20]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import S3_ENV, S3_SERVER  # noqa: E402

from raysegment.registry import Registry  # noqa: E402

WRITER = """
import sys, torch
from raysegment.config import ModelConfig
from raysegment.models.io import ModelMeta
from raysegment.models.segmenter import build_segmenter
from raysegment.registry import Registry
cfg = ModelConfig(backbone="test_efficientnet", decoder_channels=8)
meta = ModelMeta(model=cfg, num_classes=2, classes=["a", "b"], palette=[(0, 0, 0)] * 2)
reg, model = Registry(sys.argv[1]), build_segmenter(cfg, 2)
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    print(reg.register("fog", model, meta), flush=True)
"""
PROMOTER = """
import sys
from raysegment.registry import Registry
reg, worker, moves = Registry(sys.argv[1]), sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for i in range(moves):
    reg.set_alias("fog", 1 + i % 2, alias=f"w{worker}")
"""


def race(script: str, args: list[list[str]]) -> tuple[list[str], float]:
    """Start every process, wait until each has imported everything, then release them together."""
    procs = [
        subprocess.Popen([sys.executable, "-c", script, *a], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for a in args
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    start = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "a writer failed"
    return outputs, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--each", type=int, default=10)
    parser.add_argument("--moves", type=int, default=20)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", S3_SERVER, str(port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    os.environ.update({**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    boto3.client("s3").create_bucket(Bucket="bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for label, uri in (("folder", f"{tmp}/registry"), ("s3", "s3://bench/registry")):
                n, m = args.procs, args.each
                outputs, reg_s = race(WRITER, [[uri, str(m)] for _ in range(n)])
                got = sorted(int(v) for out in outputs for v in out.split())
                stored = Registry(uri).versions("fog")
                _, move_s = race(PROMOTER, [[uri, str(w), str(args.moves)] for w in range(n)])
                reg = Registry(uri)
                aliases, history = reg.aliases("fog"), reg.history("fog")
                print(
                    f"{label:<6} {n} procs x {m} registrations: versions 1..{max(got)}, "
                    f"{'none lost or doubled' if got == stored == list(range(1, n * m + 1)) else 'MISMATCH'}, "
                    f"{reg_s:.1f} s ({1000 * reg_s / (n * m):.0f} ms each); "
                    f"{n} x {args.moves} alias moves: {len(aliases)} aliases, {len(history)} history records "
                    f"(expected {n} and {n * args.moves}), {move_s:.1f} s"
                )
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
