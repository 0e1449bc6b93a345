#!/usr/bin/env bash
# The demo: write a small FF++-layout sample made from scikit-image's astronaut, then run the
# whole pipeline on it with tiny settings: the protocol scripts' steps, with LRErr, its
# Xception baseline and RECCE side by side (Table I's rows; METHOD= chooses others).
#
#   scripts/demo.sh [WORK]      (default demo-out; `make demo` runs it)
#
# Rerunning resumes: finished stages are skipped by their manifests.

source "$(dirname "$0")/lib.sh"
case ${1:-} in
    -h | --help) usage && exit 0 ;;
    -*) die "unknown argument '$1' (the one argument is the work directory)" ;;
esac
work=${1:-demo-out}
# A tiny MAE for 100 short epochs (the MAE recipe: AdamW, warm-up, cosine; colour jitter and
# flips, as the sample's two real train videos share one orientation and the val ones the
# other) and 10 detector steps from random weights (nothing is downloaded): every stage at
# work, and an MAE that paints faces, if blurred ones.
: "${FRAMES:=8}" "${MAE_EPOCHS:=100}" "${MAE_STEPS:=20}" "${DET_ITERS:=10}" "${JOBS:=2}"
: "${MAE_ARGS=--optimizer adamw --lr 1.5e-3 --warmup-epochs 5 --eval-every 25 --colour-jitter 0.3 --flip 0.5}"
: "${METHOD:=lrerr,xception,recce}"
# Where each model looks (Grad-CAM), and for LRErr and its baseline how they hold up under
# JPEG at five qualities: a minute or two more on 2 cores (`--perturb all`, the whole
# DeeperForensics grid, is 8 times that: 40 passes over the test faces, none cached).
: "${SCORE_ARGS=--cam 3}" "${SCORE_ARGS_lrerr=--perturb jpeg}" "${SCORE_ARGS_xception=--perturb jpeg}"
parse_args --ffpp "$work/sample" --work "$work" --profile tiny

[ -f "$work/sample/splits/test.json" ] || step sample lrerr-tools sample "$work/sample"
prepare ffpp
step verify lrerr-tools verify "$FFPP_DIR/shards"
train_mae
for detector in "${DETECTORS[@]}"; do
    train_det "$detector" "$detector"
    score "$detector" ffpp
done
report demo --html
running=$(IFS=,; echo "${DETECTORS[*]}")
# The question most people bring: is this video fake? One real and one fake test video.
mapfile -t clips < <(python - "$FFPP_DIR/extract" <<'PY'
import json, sys
from pathlib import Path
extract = Path(sys.argv[1])
root = json.loads((extract / "manifest.json").read_text())["config"]["root"]
first = {}
for line in open(extract / "records.jsonl"):
    record = json.loads(line)
    if record["split"] == "test":
        first.setdefault(record["label"], f"{root}/{record['path']}")
print(first[0], first[1], sep="\n")
PY
)
step "predict ${DETECTORS[0]}" lrerr-tools predict "${clips[@]}" --detector "$FFPP_DIR/det/${DETECTORS[0]}" \
    --out "$WORK/predict" --batch-size "$BATCH"

cat <<EOF

crops:     $FFPP_DIR/extract/crops/<method>/<video>/ (every frame's fate: extract/records.jsonl)
key region (check it first): $FFPP_DIR/landmarks/key_region.png
shards:    $FFPP_DIR/shards/shards/<split>-<k>.h5 (read with lrerr_tools.shard_dataset.ShardDataset)
MAE run:   $MAE_DIR/log.csv, checkpoints/best.pt (load with lrerr_tools.mae.checkpoint.load_mae)
reconstructions (original | masked | reconstruction | |difference|): $MAE_DIR/grids/
detectors: $FFPP_DIR/det/{$running} (log.csv, checkpoints/best.pt)
scores:    $FFPP_DIR/score/{$running}/ffpp-$COMP (metrics.json, CSVs, roc.png, attention.png)
report:    $WORK/reports/demo.md (above; the test split after 10 steps from random weights)
           $WORK/reports/demo.html (the same tables, ROC and PR curves, every score's figures, the frame accounting)
predict:   $WORK/predict (predictions.json, CSVs, plots/, figures/; a real and a fake video above)
EOF
if [ -f "$MAE_DIR/manifest.json" ]; then # the paper's premise, as the MAE run's last validation saw it
    echo
    echo "MAE on the val faces (last epoch):"
    python -c 'import json, sys
from lrerr_tools.mae.evaluate import premise_lines
print("\n".join("  " + line for line in premise_lines(json.load(open(sys.argv[1]))["extra"]["last"])))' \
        "$MAE_DIR/manifest.json"
fi
