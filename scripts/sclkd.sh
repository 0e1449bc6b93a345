#!/usr/bin/env bash
# SCL-KD on FF++ at one compression: train-moco (self-supervised, labels unread), the teacher
# (the MoCo encoder fine-tuned with BCE), the student (a compact timm net distilled from the
# teacher), then score both on the test split and report.
#
#   scripts/sclkd.sh --ffpp /data/FaceForensics++ --work work [--comp c40]
#
# LABEL_FRACTION=F trains the teacher and the student with the labels of a fraction F of the
# train videos (the student still learns from every face); scripts/few_labels.sh runs the
# whole few-label protocol. The runs go to WORK/ffpp-<comp>/{moco,det/sclkd-teacher,det/sclkd}
# and the report to WORK/reports/sclkd.md. --method is not read: the methods are SCL-KD's.

source "$(dirname "$0")/lib.sh"
SCRIPT_METHODS="sclkd-teacher sclkd"
parse_args "$@"

labels=()
[ -z "${LABEL_FRACTION:-}" ] || labels=(--label-fraction "$LABEL_FRACTION")
prepare ffpp
train_moco
train_det sclkd-teacher sclkd-teacher "" "${labels[@]}"
train_det sclkd sclkd "" --teacher "$FFPP_DIR/det/sclkd-teacher" "${labels[@]}"
score sclkd-teacher ffpp
score sclkd ffpp
report sclkd
