#!/usr/bin/env bash
# Table I, in-dataset: train on FF++ at one compression (all four methods) and test on its
# test split.
#
#   scripts/ffpp.sh --ffpp /data/FaceForensics++ --work work [--comp c40]
#
# Runs extract, landmarks, shard, train-mae (for methods that need it), train-det
# (--method lrerr,xception adds the baseline's row), score and report: WORK/reports/in-dataset.md. Run it once with --comp c23
# and once with --comp c40 for both of the table's column groups.

source "$(dirname "$0")/lib.sh"
parse_args "$@"

prepare ffpp
train_mae
for detector in "${DETECTORS[@]}"; do
    train_det "$detector" "$detector"
    score "$detector" ffpp
done
report in-dataset
