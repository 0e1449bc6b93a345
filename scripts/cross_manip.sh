#!/usr/bin/env bash
# Table II, cross-manipulation: train on one FF++ method at a time, test on each of the four
# (that method's fakes against all real test faces).
#
#   scripts/cross_manip.sh --ffpp /data/FaceForensics++ --work work
#
# Four detectors per --method, in WORK/ffpp-<comp>/det/<detector>-<method>; the
# table goes to WORK/reports/cross-manipulation.md. The paper's table is at c23.

source "$(dirname "$0")/lib.sh"
parse_args "$@"

prepare ffpp
train_mae
for detector in "${DETECTORS[@]}"; do
    for method in ${PAPER_METHODS//,/ }; do
        train_det "$detector-$method" "$detector" "$method"
        score "$detector-$method" ffpp
    done
done
report cross-manipulation
