#!/usr/bin/env bash
# Table V, ablation: each --method (default LRErr) against the baseline it declares (for
# LRErr and RECCE the plain Xception: the same trainer without the MAE and the attention
# maps), all trained on all of FF++ c23 and tested on Celeb-DF-v2 and DFD.
#
#   scripts/ablation.sh --ffpp /data/FaceForensics++ --celebdf /data/Celeb-DF-v2 --work work
#
# Shares its LRErr detector and test data with cross_dataset.sh. The table goes to
# WORK/reports/ablation.md.

source "$(dirname "$0")/lib.sh"
parse_args "$@"
with_baselines

cross_dataset_scores
report ablation
