#!/usr/bin/env bash
# Table IV, cross-dataset: train on all of FF++ c23, test on FF++ itself, on Celeb-DF-v2's
# official test videos and on DFD.
#
#   scripts/cross_dataset.sh --ffpp /data/FaceForensics++ --celebdf /data/Celeb-DF-v2 --work work
#
# DFD is read from the FF++ root unless --dfd says otherwise. The detector is the one
# ffpp.sh trains (WORK/ffpp-c23/det/lrerr), so running both trains it once. The table goes to
# WORK/reports/cross-dataset.md.

source "$(dirname "$0")/lib.sh"
parse_args "$@"

cross_dataset_scores
report cross-dataset
