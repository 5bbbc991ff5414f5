#!/usr/bin/env bash
# One process at batch 2B against `torchrun --nproc-per-node 2` at batch B per process, two
# seeds each, on a feature pack (spikeear features ...): docs/scale-out-batch.md.
# Usage: benchmarks/ddp_equivalence.sh PACK.npz OUT_DIR
set -euo pipefail
pack=$1
out=$2
mkdir -p "$out"
common=(--features "$pack" --distill 0 --hidden 64 64 --epochs 10 --threads 1)
for seed in 0 1; do
  spikeear train "${common[@]}" --batch-size 128 --seed "$seed" --out "$out/one-s$seed.pt"
  torchrun --nproc-per-node 2 -m training.distributed "${common[@]}" --batch-size 64 \
    --seed "$seed" --out "$out/two-s$seed.pt"
done
for log in "$out"/*.log.jsonl; do
  tail -1 "$log" | python -c "import json, sys; d = json.load(sys.stdin); \
print('$log', 'epoch', d['epoch'], 'train', d['train_accuracy'], 'val', d['val_accuracy'])"
done
