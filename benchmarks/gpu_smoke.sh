#!/usr/bin/env bash
# The GPU check, as one script a GPU machine runs as it is (about 5 minutes on one GPU, 8 at
# most): the synthetic FF++ sample → extract --device cuda → landmarks → shard → train-mae
# --amp → train-det --amp of every registered method (`lrerr-tools methods --tsv`) → score of
# each, printing each stage's throughput (train-det: also each epoch's training seconds, so
# the first epoch, which fills LRErr's cache, shows against the later ones).
#
#   benchmarks/gpu_smoke.sh [WORK]              (default: a temp directory, removed after)
#   DEVICE=cpu benchmarks/gpu_smoke.sh          the same steps on the CPU, smaller: a dry check
#
# Environment: PYTHON (default python3; it needs the project importable: run from the
# repository root, which goes on PYTHONPATH), DEVICE (cuda), and the sizes FRAMES, BATCH,
# MAE_STEPS, DET_EPOCHS, DET_ITERS. DET_ARGS_<method> adds a method's own options
# (DET_ARGS_lrerr defaults to --random-extractor: nothing is downloaded, so every backbone
# starts from random weights). It installs onnxruntime-gpu with pip when extract's detector
# has no CUDA provider; where that cannot be installed (no network), extract runs on the CPU
# and says so, and the other stages still run on the GPU.
set -euo pipefail

DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
if [ "$DEVICE" = cuda ]; then
    : "${FRAMES:=16}" "${BATCH:=32}" "${MAE_STEPS:=30}" "${DET_EPOCHS:=3}" "${DET_ITERS:=20}" "${JOBS:=4}"
    MAE_PRESET=base
else
    : "${FRAMES:=2}" "${BATCH:=4}" "${MAE_STEPS:=2}" "${DET_EPOCHS:=2}" "${DET_ITERS:=2}" "${JOBS:=2}"
    MAE_PRESET=tiny
fi
: "${DET_ARGS_lrerr=--random-extractor}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [ -n "${1:-}" ]; then
    WORK=$1
    mkdir -p "$WORK"
else
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
fi
lt() { "$PYTHON" -m lrerr_tools "$@"; }
# field FILE EXPR: a number from a JSON manifest (`m`) or the last row of a CSV log (`r`)
field() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import csv, json, sys
path, expr = sys.argv[1:]
if path.endswith(".csv"):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    print(eval(expr, {"r": rows[-1], "rows": rows}))
else:
    print(eval(expr, {"m": json.load(open(path))}))
EOF
}
timed() { # timed NAME CMD...: run CMD, its wall seconds into SECONDS_TAKEN
    local start=$SECONDS
    echo "== gpu_smoke: $1" >&2
    "${@:2}"
    SECONDS_TAKEN=$((SECONDS - start))
}
results=()
report() { results+=("$(printf '%-26s %s' "$1" "$2")"); }

"$PYTHON" - <<EOF
import torch
if "$DEVICE" == "cuda":
    assert torch.cuda.is_available(), "DEVICE=cuda but torch sees no GPU (DEVICE=cpu for a dry check)"
    print("GPU:", torch.cuda.get_device_name(0), "| bf16:", torch.cuda.is_bf16_supported())
print("torch", torch.__version__)
EOF

has_cuda_provider() {
    "$PYTHON" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
        2>/dev/null
}
extract_device=$DEVICE
if [ "$DEVICE" = cuda ] && ! has_cuda_provider; then
    echo "== gpu_smoke: onnxruntime has no CUDA provider; installing onnxruntime-gpu" >&2
    # The CPU and GPU wheels install the same module: the GPU one must replace the other.
    if "$PYTHON" -m pip install --quiet onnxruntime-gpu && has_cuda_provider; then
        :
    else
        echo "== gpu_smoke: onnxruntime-gpu is not usable here; extract runs on the CPU" >&2
        extract_device=cpu
    fi
fi

timed sample lt sample "$WORK/sample" --frames $((FRAMES + 4))
timed "extract --device $extract_device" lt extract "$WORK/sample" --dataset ffpp --splits "$WORK/sample/splits" \
    --out "$WORK/extract" --frames "$FRAMES" --jobs "$JOBS" --device "$extract_device"
crops=$(field "$WORK/extract/manifest.json" 'm["counts"]["crops"]')
report "extract ($extract_device)" "$crops crops in ${SECONDS_TAKEN}s (process start included)"
timed landmarks lt landmarks "$WORK/extract" --out "$WORK/landmarks" --jobs "$JOBS"
timed shard lt shard "$WORK/landmarks" --out "$WORK/shards" --jobs "$JOBS"
report shard "$(field "$WORK/shards/manifest.json" 'm["counts"]')"

timed train-mae lt train-mae "$WORK/shards" --out "$WORK/mae" --preset "$MAE_PRESET" --epochs 1 \
    --max-steps "$MAE_STEPS" --batch-size "$BATCH" --workers 2 --device "$DEVICE" --amp
report "train-mae ($MAE_PRESET)" "$(field "$WORK/mae/log.csv" 'r["images_per_s"]') img/s, ${SECONDS_TAKEN}s in all"

while IFS=$'\t' read -r method needs _baseline; do
    options=()
    [[ ,$needs, != *,train-mae,* ]] || options+=(--mae "$WORK/mae")
    own=DET_ARGS_${method//-/_}
    read -ra own_args <<<"${!own:-}"
    timed "train-det $method" lt train-det "$WORK/shards" --out "$WORK/det/$method" --method "$method" \
        "${options[@]}" --no-pretrained --epochs "$DET_EPOCHS" --iters-per-epoch "$DET_ITERS" \
        --batch-size "$BATCH" --workers 2 --device "$DEVICE" --amp "${own_args[@]}"
    log=$WORK/det/$method/log.csv
    epochs=$(field "$log" '" ".join("%.1f" % float(x["seconds"]) for x in rows)')
    report "train-det $method" "$(field "$log" 'r["images_per_s"]') img/s (last epoch's steps); \
${SECONDS_TAKEN}s in all; train seconds per epoch: $epochs"
    timed "score $method" lt score "$WORK/shards" --detector "$WORK/det/$method" --out "$WORK/score/$method" \
        --batch-size "$BATCH" --workers 2 --device "$DEVICE"
    faces=$(field "$WORK/score/$method/manifest.json" 'm["counts"]["frames"]')
    report "score $method" "$faces test faces in ${SECONDS_TAKEN}s (process start and model load included)"
done < <(lt methods --tsv)

echo
echo "gpu_smoke on $DEVICE: all stages ran"
printf '%s\n' "${results[@]}"
