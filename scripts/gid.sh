#!/usr/bin/env bash
# Table III, leave-one-out: GID-DF trains on Face2Face, FaceSwap and NeuralTextures and tests
# on Deepfakes; GID-F2F leaves out Face2Face the same way.
#
#   scripts/gid.sh --ffpp /data/FaceForensics++ --work work [--comp c40]
#
# Detectors in WORK/ffpp-<comp>/det/<detector>-gid-<method>; the table goes to
# WORK/reports/leave-one-out.md. Run it at c23 and at c40 for all of the table's columns.

source "$(dirname "$0")/lib.sh"
parse_args "$@"

prepare ffpp
train_mae
for detector in "${DETECTORS[@]}"; do
    for target in Deepfakes Face2Face; do
        others=$(tr , '\n' <<<"$PAPER_METHODS" | grep -vx "$target" | paste -sd,)
        train_det "$detector-gid-$target" "$detector" "$others"
        score "$detector-gid-$target" ffpp
    done
done
report leave-one-out
