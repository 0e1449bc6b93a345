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

# A tiny MAE for 2 short epochs: enough to see the stage work, not to learn faces.
lrerr-tools train-mae "$work/shards" --out "$work/mae" --preset tiny --epochs 2 --max-steps 20 \
    --batch-size 8 --workers 1

# LRErr and the plain Xception baseline, one flag apart (the paper's Table V ablation): 10
# steps each from random weights (--no-pretrained: nothing is downloaded), then scored on the
# test split. They show the stages work, not what LRErr can learn.
lrerr-tools train-det "$work/shards" --method lrerr --mae "$work/mae" --out "$work/det-lrerr" \
    --no-pretrained --epochs 1 --iters-per-epoch 10 --batch-size 8 --workers 1
lrerr-tools train-det "$work/shards" --method xception --out "$work/det-xception" \
    --no-pretrained --epochs 1 --iters-per-epoch 10 --batch-size 8 --workers 1
for method in lrerr xception; do
    lrerr-tools score "$work/shards" --detector "$work/det-$method" --out "$work/score-$method" \
        --batch-size 8 --workers 1 > "$work/score-$method.txt"
done
lrerr-tools report "$work/score-lrerr" "$work/score-xception" --out "$work/report.md"

echo
echo "crops:    $work/extract/crops/<method>/<video>/"
echo "records:  $work/extract/records.jsonl"
echo "key region (check it first): $work/landmarks/key_region.png"
echo "shards:   $work/shards/shards/<split>-<k>.h5 (read with lrerr_tools.shard_dataset.ShardDataset)"
echo "MAE run:  $work/mae/log.csv, checkpoints/best.pt (load with lrerr_tools.mae.checkpoint.load_mae)"
echo "reconstructions (original | masked | reconstruction | |difference|): $work/mae/grids/epoch-002.png"
echo "detectors: $work/det-lrerr, $work/det-xception (log.csv, checkpoints/best.pt)"
echo "report:   $work/report.md (the paper's tables; CSVs beside it)"
echo
echo "== test split, 10 training steps from random weights (in %) =="
cat "$work/score-lrerr.txt" "$work/score-xception.txt"
