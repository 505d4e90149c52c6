#!/usr/bin/env bash
# Bring your own model on the real shift: a plain SMP script trains a Unet on DRIVE, raysegment imports
# it, compares on CHASE_DB1 (label-free and 2/5-shot, active selection), registers and serves it.
# Run from the repository root with the retina data laid out in data/retina (README, Real data).
set -euo pipefail
DATA=${DATA:-data/retina}; W=${W:-bench_out/byo}; mkdir -p $W
python examples/smp_retina_unet.py --data $DATA --out $W/runs/smp --epochs 30
raysegment import-model $W/runs/smp/unet.pth --library smp --arch Unet --encoder tu-efficientnet_lite0 \
    --classes 2 --dataset-info $DATA/dataset.json --short-side 320 --out $W/smp_model
raysegment compare --source $W/smp_model --data $DATA --source-domain drive --targets chase --shots 2 5 \
    --select active --registry $W/registry --epochs 4 --out $W/adapt_out
raysegment registry ls --registry $W/registry
raysegment serve --registry $W/registry --port 8011 & SERVE=$!
sleep 60
IMG=$(ls $DATA/chase/images | head -1)
curl -s -o $W/answer.png -w "served: HTTP %{http_code}, %{size_download} B\n" -X POST \
    --data-binary "@$DATA/chase/images/$IMG" -H "content-type: image/png" http://127.0.0.1:8011/v1/domains/chase/segment
kill -TERM $SERVE; wait $SERVE
