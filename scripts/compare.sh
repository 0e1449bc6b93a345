#!/usr/bin/env bash
# One comparison of every registered method on one protocol: train each on all of FF++ at one
# compression, score each on FF++, Celeb-DF-v2 and DFD, and write the methods × test sets
# table (Table IV, each AUC with its 95 % interval) with the other tables these scores fill,
# and the self-contained HTML report: WORK/reports/compare.md and compare.html.
#
#   scripts/compare.sh --ffpp /data/FaceForensics++ --celebdf /data/Celeb-DF-v2 --work work [--methods lrerr,xception]
#
# --methods (or --method, METHOD) picks a subset, comma-separated; the default is every method
# `lrerr-tools methods` lists. Each trains after its parent runs: LRErr's train-mae run, the
# SCL-KD teacher's train-moco run, and the SCL-KD student's teacher (the sclkd-teacher run,
# trained here if --methods leaves it out, and scored too). Runs: WORK/ffpp-<comp>/det/<method>,
# the ones the other scripts train, so a detector they finished is not trained again.

source "$(dirname "$0")/lib.sh"
args=()
while (($#)); do
    if [ "$1" = --methods ]; then
        (($# >= 2)) || die "--methods needs a value"
        args+=(--method "$2")
        shift 2
    else
        args+=("$1")
        shift
    fi
done
: "${METHOD:=all}"
parse_args "${args[@]}"

cross_dataset_scores
report compare --html
