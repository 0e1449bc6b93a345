#!/usr/bin/env bash
# The few-label protocol (docs/protocols.md): for each label fraction F, train the SCL-KD
# teacher, its student and a plain Xception with the labels of the same F of the train videos
# (stratified by label and fake method, chosen by a seeded hash of the video id), score each
# on FF++ test, and report AUC against F: WORK/reports/few-labels.md.
#
#   scripts/few_labels.sh --ffpp /data/FaceForensics++ --work work [--comp c40]
#
# FRACTIONS: the label fractions, comma-separated [default: 0.01,0.05,0.2,1]. One MoCo run
# serves every fraction: it reads no label. Runs: WORK/ffpp-<comp>/det/<method>-f<F>.
# --method is not read: the methods are the teacher, the student and Xception.

source "$(dirname "$0")/lib.sh"
SCRIPT_METHODS="sclkd-teacher sclkd xception"
parse_args "$@"

IFS=, read -ra fractions <<<"${FRACTIONS:-0.01,0.05,0.2,1}"
((${#fractions[@]})) || die "FRACTIONS names no label fraction"
for fraction in "${fractions[@]}"; do
    [[ $fraction =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] || die "FRACTIONS: '$fraction' is not a fraction in (0, 1]"
done

prepare ffpp
train_moco
for fraction in "${fractions[@]}"; do
    labels=(--label-fraction "$fraction")
    train_det "sclkd-teacher-f$fraction" sclkd-teacher "" "${labels[@]}"
    train_det "sclkd-f$fraction" sclkd "" --teacher "$FFPP_DIR/det/sclkd-teacher-f$fraction" "${labels[@]}"
    train_det "xception-f$fraction" xception "" "${labels[@]}"
    for detector in sclkd-teacher sclkd xception; do
        score "$detector-f$fraction" ffpp
    done
done
report few-labels
