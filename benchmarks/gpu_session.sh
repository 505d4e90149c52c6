#!/usr/bin/env bash
# The lent GPU machine's one prepared run (it has torch, timm, torchmetrics, safetensors; no Ray,
# pydantic or kornia). A first call left /tmp/dev/site.part-aa there; this call carries the
# second half of the same xz'd site-packages (Ray 2.60 + Serve/Tune deps, pydantic, kornia, for
# CPython 3.12), unpacks it, and writes each benchmark's output to $OUT as it goes.
#   first call:  mkdir -p /tmp/dev && cp .devcarry/a/site.part-aa /tmp/dev/
#   second call: bash benchmarks/gpu_session.sh     (carry .devcarry/b)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/site
{
  nvidia-smi -L; nproc; python --version
  time (cat /tmp/dev/site.part-aa .devcarry/b/site.part-ab | xz -d -T0 | tar x -C /tmp/site)
} > "$OUT/setup.txt" 2>&1
export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python -c "import ray, pydantic, kornia, raysegment.serving.app; print('ray', ray.__version__)" >> "$OUT/setup.txt" 2>&1
timeout 230 python benchmarks/bench_serve.py --device cuda --height 512 --width 1024 --ingress 8 \
  --seconds 4 --concurrency 1 8 32 64 > "$OUT/bench_serve_gpu.txt" 2> "$OUT/bench_serve_gpu.err"
echo "rc=$?" >> "$OUT/bench_serve_gpu.txt"
timeout 250 python benchmarks/bench_tune.py --samples 16 --epochs 8 --targets fog night \
  --asha 1:2 1:3 2:3 --cpus 16 --no-sizes > "$OUT/bench_tune_16cpu.txt" 2> "$OUT/bench_tune_16cpu.err"
echo "rc=$?" >> "$OUT/bench_tune_16cpu.txt"
for f in "$OUT"/*.err; do tail -c 200000 "$f" > "$f.tail" && mv "$f.tail" "$f"; done
