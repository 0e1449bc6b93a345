#!/usr/bin/env bash
# The demo: build a small FF++-layout sample from scikit-image's astronaut, then run the
# pipeline on it. Rerunning resumes: finished stages are skipped by their manifests.
set -euo pipefail
work=${1:-demo-out}
mkdir -p "$work"

if [ ! -f "$work/sample/splits/test.json" ]; then
    lrerr-tools sample "$work/sample"
fi

lrerr-tools extract "$work/sample" --dataset ffpp --splits "$work/sample/splits" \
    --out "$work/extract" --frames 8 --jobs 2

lrerr-tools landmarks "$work/extract" --out "$work/landmarks" --jobs 2

lrerr-tools shard "$work/landmarks" --out "$work/shards"
lrerr-tools verify "$work/shards"

echo
echo "crops:    $work/extract/crops/<method>/<video>/"
echo "records:  $work/extract/records.jsonl"
echo "key region (check it first): $work/landmarks/key_region.png"
echo "shards:   $work/shards/shards/<split>-<k>.h5 (read with lrerr_tools.shard_dataset.ShardDataset)"
