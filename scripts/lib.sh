# Sourced by the protocol scripts (ffpp.sh, cross_manip.sh, gid.sh, cross_dataset.sh,
# ablation.sh, sclkd.sh, few_labels.sh, compare.sh), slurm_extract.sh and demo.sh: their options, settings, and one function per
# pipeline step. Every step is a lrerr-tools stage that returns at once when its output
# directory already holds a complete result made with the same settings (its manifest says
# so), and refuses in one line when the settings changed; so a rerun skips what is done and
# resumes what was interrupted. The first failing stage stops the script.
#
# Work directory (WORK):
#   ffpp-<comp>/{extract,landmarks,shards,mae,moco}  FF++ at one compression
#   ffpp-<comp>/det/<run>                          detectors trained on it
#   ffpp-<comp>/score/<run>/<test data>            each detector scored on a test set
#   celebdf/, dfd-<comp>/                          test-only data for cross-dataset scoring
#   reports/<name>.md, <name>.<table>.csv          the paper's tables these scores fill
#   reports/<name>.html                             and the self-contained HTML report (compare.sh, demo.sh)

set -euo pipefail

SCRIPT=$(basename "$0")
PAPER_METHODS=Deepfakes,Face2Face,FaceSwap,NeuralTextures

die() {
    echo "$SCRIPT: $*" >&2
    exit 2
}

usage() {
    # The calling script's header comment is its help.
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
}

SETTINGS_HELP='Options (each also read from the environment variable in brackets):
  --ffpp DIR          FaceForensics++ root [FFPP_ROOT]
  --ffpp-splits DIR   folder with the official train/val/test.json [FFPP_SPLITS; default FFPP_ROOT/splits]
  --celebdf DIR       Celeb-DF-v2 root [CELEBDF_ROOT]
  --celebdf-list FILE its official test list [CELEBDF_LIST; default CELEBDF_ROOT/List_of_testing_videos.txt]
  --dfd DIR           DFD root [DFD_ROOT; default: FFPP_ROOT, where the FF++ download puts it]
  --work DIR          work directory, shared by all scripts [WORK; default: work]
  --comp c23|c40      FF++ compression to train on [COMP; default: c23]
  --profile NAME      paper (the paper'"'"'s settings) or tiny (minutes on a laptop) [PROFILE]
  --method NAMES      detection methods to train and score, comma-separated, or all [METHOD; default:
                      lrerr; `lrerr-tools methods` lists them]
  --dry-run           check the settings and the datasets, then print each stage command the script
                      would run, one a line, and run none of them [DRY_RUN=1]
Settings the profile chooses, each overridable by its variable: FRAMES (per video), MAE_PRESET,
MAE_EPOCHS, MAE_STEPS (cap per epoch), DET_EPOCHS, DET_ITERS, BATCH, WORKERS, PRETRAINED (0/1),
JOBS (videos in parallel, 0 = a core each); for SCL-KD'"'"'s train-moco: MOCO_EPOCHS, MOCO_STEPS (cap
per epoch), MOCO_BATCH, MOCO_QUEUE, MOCO_WIDTH (also the teacher'"'"'s --width), MOCO_CROP.
Extra stage options: EXTRACT_ARGS, LANDMARKS_ARGS, SHARD_ARGS, MAE_ARGS, MOCO_ARGS, DET_ARGS (every method),
DET_ARGS_<method> (one method'"'"'s own options, e.g. DET_ARGS_lrerr="--attn-layers block2"), SCORE_ARGS,
SCORE_ARGS_<method> (one method'"'"'s scores only, e.g. SCORE_ARGS_lrerr="--perturb all").
MAE=RUN_DIR (MOCO=RUN_DIR) uses that finished train-mae (train-moco) run instead of training one. TRAIN_LAUNCH runs the
training stages, e.g. "torchrun --nproc_per_node 8 -m lrerr_tools" (default: lrerr-tools).'

parse_args() {
    while (($#)); do
        case $1 in
            -h | --help)
                usage
                echo
                echo "$SETTINGS_HELP"
                exit 0
                ;;
            --dry-run)
                DRY_RUN=1
                shift
                ;;
            --ffpp | --ffpp-splits | --celebdf | --celebdf-list | --dfd | --work | --comp | --profile | --method)
                (($# >= 2)) || die "$1 needs a value"
                case $1 in
                    --ffpp) FFPP_ROOT=$2 ;;
                    --ffpp-splits) FFPP_SPLITS=$2 ;;
                    --celebdf) CELEBDF_ROOT=$2 ;;
                    --celebdf-list) CELEBDF_LIST=$2 ;;
                    --dfd) DFD_ROOT=$2 ;;
                    --work) WORK=$2 ;;
                    --comp) COMP=$2 ;;
                    --profile) PROFILE=$2 ;;
                    --method) METHOD=$2 ;;
                esac
                shift 2
                ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
    done
    settings
}

settings() {
    case ${PROFILE:=paper} in
        paper)
            : "${FRAMES:=32}" "${MAE_PRESET:=base}" "${MAE_EPOCHS:=300}" "${MAE_STEPS:=}"
            : "${DET_EPOCHS:=30}" "${DET_ITERS:=200}" "${BATCH:=32}" "${WORKERS:=4}" "${PRETRAINED:=1}"
            : "${MOCO_EPOCHS:=200}" "${MOCO_STEPS:=}" "${MOCO_BATCH:=256}" "${MOCO_QUEUE:=65536}"
            : "${MOCO_WIDTH:=1}" "${MOCO_CROP:=224}"
            ;;
        tiny)
            # Shows every stage working on the demo sample; learns nothing. Random weights are
            # its point, so LRErr is told its frozen extractor is random on purpose.
            : "${FRAMES:=4}" "${MAE_PRESET:=tiny}" "${MAE_EPOCHS:=1}" "${MAE_STEPS:=5}"
            : "${DET_EPOCHS:=1}" "${DET_ITERS:=4}" "${BATCH:=8}" "${WORKERS:=1}" "${PRETRAINED:=0}"
            : "${DET_ARGS_lrerr=--random-extractor}"
            : "${MOCO_EPOCHS:=1}" "${MOCO_STEPS:=2}" "${MOCO_BATCH:=8}" "${MOCO_QUEUE:=32}"
            : "${MOCO_WIDTH:=0.0625}" "${MOCO_CROP:=32}" "${MOCO_ARGS=--bn-splits 2}"
            ;;
        *) die "--profile must be paper or tiny (got '$PROFILE')" ;;
    esac
    : "${COMP:=c23}" "${DRY_RUN:=0}" "${JOBS:=0}" "${WORK:=work}" "${METHOD:=lrerr}" "${TRAIN_LAUNCH:=lrerr-tools}"
    case $COMP in c23 | c40) ;; *) die "--comp must be c23 or c40 (got '$COMP')" ;; esac
    # Checked here so that a typo stops the script before hours of work, not at the stage that reads it.
    local name
    for name in FRAMES MAE_EPOCHS DET_EPOCHS DET_ITERS BATCH MOCO_EPOCHS MOCO_BATCH MOCO_QUEUE MOCO_CROP; do
        [[ ${!name} =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive whole number (got '${!name}')"
    done
    for name in WORKERS JOBS; do
        [[ ${!name} =~ ^[0-9]+$ ]] || die "$name must be a whole number, 0 or more (got '${!name}')"
    done
    [[ -z $MAE_STEPS || $MAE_STEPS =~ ^[1-9][0-9]*$ ]] || die "MAE_STEPS must be empty or a positive whole number (got '$MAE_STEPS')"
    [[ -z $MOCO_STEPS || $MOCO_STEPS =~ ^[1-9][0-9]*$ ]] || die "MOCO_STEPS must be empty or a positive whole number (got '$MOCO_STEPS')"
    case $PRETRAINED in 0 | 1) ;; *) die "PRETRAINED must be 0 or 1 (got '$PRETRAINED')" ;; esac
    case $DRY_RUN in 0 | 1) ;; *) die "DRY_RUN must be 0 or 1 (got '$DRY_RUN')" ;; esac
    read -ra EXTRACT_EXTRA <<<"${EXTRACT_ARGS:-}"
    read -ra LANDMARKS_EXTRA <<<"${LANDMARKS_ARGS:-}"
    read -ra SHARD_EXTRA <<<"${SHARD_ARGS:-}"
    read -ra MAE_EXTRA <<<"${MAE_ARGS:-}"
    read -ra MOCO_EXTRA <<<"${MOCO_ARGS:-}"
    read -ra DET_EXTRA <<<"${DET_ARGS:-}"
    read -ra SCORE_EXTRA <<<"${SCORE_ARGS:-}"
    read -ra LAUNCH <<<"$TRAIN_LAUNCH"
    FFPP_DIR=$WORK/ffpp-$COMP
    MAE_DIR=${MAE:-$FFPP_DIR/mae}
    MOCO_DIR=${MOCO:-$FFPP_DIR/moco}
    # A script that always trains the same methods (sclkd.sh, few_labels.sh) names them in
    # SCRIPT_METHODS, so that --method is not looked up for nothing.
    if [ -n "${SCRIPT_METHODS:-}" ]; then
        methods $SCRIPT_METHODS
    elif [ "$METHOD" = all ]; then
        methods
    else
        methods ${METHOD//,/ }
    fi
}

declare -A NEEDS BASELINE
methods() { # methods [NAME...]: check the names (none: every method) and learn each one's parent stages and baseline
    local info name needs baseline
    local status=0
    info=$(lrerr-tools methods --tsv "$@") || status=$?
    if ((status == 130 || status == 143)); then
        echo "$SCRIPT: interrupted. Rerun the same command to resume." >&2
        exit "$status"
    fi
    ((status == 0)) || die "--method: see the error above"
    DETECTORS=()
    # Split on '|', not the tabs: read merges adjacent tabs (IFS whitespace), so a method with no
    # parent stage would take its baseline for its parent (RECCE's "recce<TAB><TAB>xception").
    while IFS='|' read -r name needs baseline; do
        DETECTORS+=("$name")
        NEEDS[$name]=$needs
        BASELINE[$name]=$baseline
    done <<<"${info//$'\t'/|}"
}

with_baselines() { # DETECTORS and the baselines they are compared with (Table V), each once
    local name all=()
    for name in "${DETECTORS[@]}"; do
        [ -z "${BASELINE[$name]}" ] || [[ " ${all[*]} " == *" ${BASELINE[$name]} "* ]] || all+=("${BASELINE[$name]}")
        [[ " ${all[*]} " == *" $name "* ]] || all+=("$name")
    done
    methods "${all[@]}"
}

TEACHER=sclkd-teacher # the method of the detector run a student learns from, as sclkd.sh trains it

with_teachers() { # DETECTORS, each student (a method whose parent is a detector run) after its teacher
    local name all=()
    for name in "${DETECTORS[@]}"; do
        [[ ,${NEEDS[$name]}, != *,train-det,* ]] || [[ " ${all[*]} " == *" $TEACHER "* ]] || all+=("$TEACHER")
        [[ " ${all[*]} " == *" $name "* ]] || all+=("$name")
    done
    # Each `methods` costs a start-up of lrerr-tools: only for a teacher not described yet.
    if [ "${all[*]}" = "${DETECTORS[*]}" ]; then
        return
    elif [ -n "${NEEDS[$TEACHER]+known}" ]; then
        DETECTORS=("${all[@]}")
    else
        methods "${all[@]}"
    fi
}

needs_mae() { # needs_mae: does any of DETECTORS train on a train-mae run?
    local name
    for name in "${DETECTORS[@]}"; do
        [[ ,${NEEDS[$name]}, != *,train-mae,* ]] || return 0
    done
    return 1
}

need_dir() { # need_dir VALUE OPTION WHAT
    [ -n "$1" ] || die "$2 DIR is needed: $3"
    [ -d "$1" ] || die "$2 $1: not a directory ($3)"
}

step() { # step NAME COMMAND...: run one stage, or stop the script with a line that says where
    echo "== $SCRIPT: $1" >&2
    local name=$1 status=0
    shift
    if ((DRY_RUN)); then
        local quoted
        printf -v quoted '%q ' "$@"
        echo "${quoted% }"
        return
    fi
    "$@" || status=$?
    if ((status == 130 || status == 143)); then # SIGINT, SIGTERM: there may be no error to read
        echo "$SCRIPT: interrupted at '$name'. Rerun the same command to resume: finished stages are skipped." >&2
        exit "$status"
    elif ((status)); then
        echo "$SCRIPT: stopped at '$name' (exit $status), error above. Fix it and rerun: finished stages are skipped." >&2
        exit "$status"
    fi
}

data_dir() { # data_dir DATASET: where a dataset's extract/landmarks/shards go
    case $1 in
        ffpp) echo "$FFPP_DIR" ;;
        celebdf) echo "$WORK/celebdf" ;;
        dfd) echo "$WORK/dfd-$COMP" ;;
    esac
}

extract_command() { # extract_command DATASET: sets EXTRACT_CMD, the extract every script and job runs
    local source
    case $1 in
        ffpp)
            need_dir "${FFPP_ROOT:-}" --ffpp "the FaceForensics++ root"
            local splits=${FFPP_SPLITS:-$FFPP_ROOT/splits}
            need_dir "$splits" --ffpp-splits "the official train/val/test.json (see docs/datasets.md)"
            source=("$FFPP_ROOT" --dataset ffpp --compression "$COMP" --methods "$PAPER_METHODS" --splits "$splits")
            ;;
        celebdf)
            need_dir "${CELEBDF_ROOT:-}" --celebdf "the Celeb-DF-v2 root"
            # Only its 518 official test videos are ever scored.
            source=("$CELEBDF_ROOT" --dataset celebdf --keep-splits test)
            [ -z "${CELEBDF_LIST:-}" ] || source+=(--splits "$CELEBDF_LIST")
            ;;
        dfd)
            need_dir "${DFD_ROOT:-${FFPP_ROOT:-}}" --dfd "the DFD root (by default the FF++ root)"
            source=("${DFD_ROOT:-$FFPP_ROOT}" --dataset dfd --compression "$COMP")
            ;;
        *) die "unknown dataset '$1'" ;;
    esac
    EXTRACT_CMD=(lrerr-tools extract "${source[@]}" --out "$(data_dir "$1")/extract" --frames "$FRAMES"
        --jobs "$JOBS" "${EXTRACT_EXTRA[@]}")
}

after_extract() { # after_extract DATASET: landmarks and shards of an extracted dataset
    local dir
    dir=$(data_dir "$1")
    step "landmarks $1" lrerr-tools landmarks "$dir/extract" --out "$dir/landmarks" --jobs "$JOBS" \
        "${LANDMARKS_EXTRA[@]}"
    step "shard $1" lrerr-tools shard "$dir/landmarks" --out "$dir/shards" --jobs "$JOBS" "${SHARD_EXTRA[@]}"
}

prepare() { # prepare DATASET: extract, landmarks and shards
    extract_command "$1"
    step "extract $1" "${EXTRACT_CMD[@]}"
    after_extract "$1"
}

check() { # check NAME COMMAND...: a step that writes nothing, so it runs under --dry-run too
    local DRY_RUN=0
    step "$@"
}

train_mae() { # the MAE on FF++'s real train faces, if a method needs one and MAE names no finished run
    needs_mae || return 0
    if [ -n "${MAE:-}" ]; then
        echo "== $SCRIPT: using the MAE run $MAE" >&2
        return
    fi
    local cap=()
    [ -z "$MAE_STEPS" ] || cap=(--max-steps "$MAE_STEPS")
    step train-mae "${LAUNCH[@]}" train-mae "$FFPP_DIR/shards" --out "$MAE_DIR" --preset "$MAE_PRESET" \
        --epochs "$MAE_EPOCHS" "${cap[@]}" --batch-size "$BATCH" --workers "$WORKERS" --resume "${MAE_EXTRA[@]}"
}

MOCO_READY=0
train_moco() { # SCL-KD's MoCo encoder on FF++'s train faces, unless MOCO names a finished run
    ((!MOCO_READY)) || return 0 # this script has trained or found it already
    if [ -n "${MOCO:-}" ]; then
        echo "== $SCRIPT: using the MoCo run $MOCO" >&2
        MOCO_READY=1
        return
    fi
    local cap=()
    [ -z "$MOCO_STEPS" ] || cap=(--max-steps "$MOCO_STEPS")
    step train-moco "${LAUNCH[@]}" train-moco "$FFPP_DIR/shards" --out "$MOCO_DIR" --width "$MOCO_WIDTH" \
        --epochs "$MOCO_EPOCHS" "${cap[@]}" --batch-size "$MOCO_BATCH" --queue-size "$MOCO_QUEUE" \
        --crop-size "$MOCO_CROP" --workers "$WORKERS" --resume "${MOCO_EXTRA[@]}"
    MOCO_READY=1
}

declare -A RUN_METHOD
train_det() { # train_det RUN DETECTOR [FAKE_METHODS [OPTION...]]: a detector on FF++ train, in ffpp-<comp>/det/RUN
    local options=(--method "$2") own own_args
    RUN_METHOD[$1]=$2
    [[ ,${NEEDS[$2]}, != *,train-mae,* ]] || options+=(--mae "$MAE_DIR")
    if [[ ,${NEEDS[$2]}, == *,train-moco,* ]]; then
        train_moco # at most once a script: every script can train SCL-KD's teacher
        options+=(--init "$MOCO_DIR" --width "$MOCO_WIDTH")
    fi
    [[ ,${NEEDS[$2]}, != *,train-det,* || " ${*:4} " == *" --teacher "* ]] ||
        die "--method $2 learns from another detector run: train it with scripts/sclkd.sh or scripts/few_labels.sh"
    own=DET_ARGS_${2//-/_}
    read -ra own_args <<<"${!own:-}"
    [ -z "${3:-}" ] || options+=(--methods "$3")
    options+=("${@:4}")
    if [ "$PRETRAINED" = 1 ]; then options+=(--pretrained); else options+=(--no-pretrained); fi
    step "train-det $1" "${LAUNCH[@]}" train-det "$FFPP_DIR/shards" --out "$FFPP_DIR/det/$1" "${options[@]}" \
        --epochs "$DET_EPOCHS" --iters-per-epoch "$DET_ITERS" --batch-size "$BATCH" --workers "$WORKERS" \
        --resume "${DET_EXTRA[@]}" "${own_args[@]}"
}

score_dir() { # score_dir RUN DATASET COMP: where `score` puts RUN (trained at COMP) on DATASET
    local test=$2-$3
    [ "$2" != celebdf ] || test=celebdf
    echo "$WORK/ffpp-$3/score/$1/$test"
}

SCORED=()
score() { # score RUN DATASET: the detector RUN (trained by train_det) on DATASET's test split
    local out own own_args
    out=$(score_dir "$1" "$2" "$COMP")
    own=SCORE_ARGS_${RUN_METHOD[$1]//-/_}
    read -ra own_args <<<"${!own:-}"
    step "score $1 on $2" lrerr-tools score "$(data_dir "$2")/shards" --detector "$FFPP_DIR/det/$1" \
        --out "$out" --batch-size "$BATCH" --workers "$WORKERS" "${SCORE_EXTRA[@]}" "${own_args[@]}"
    SCORED+=("$1 $2")
}

report() { # report TABLE [OPTION...]: the tables this script's scores fill, in WORK/reports/TABLE.md
    local dirs=() comp scored path
    # The same runs at the other compression join the table once they exist, filling its columns.
    for comp in c23 c40; do
        for scored in "${SCORED[@]}"; do
            path=$(score_dir $scored "$comp") # $scored is "RUN DATASET"
            # Under --dry-run this script's own scores don't exist yet, but would.
            if [ -f "$path/metrics.json" ] || { ((DRY_RUN)) && [ "$comp" = "$COMP" ]; }; then dirs+=("$path"); fi
        done
    done
    ((DRY_RUN)) || mkdir -p "$WORK/reports"
    step "report $1" lrerr-tools report "${dirs[@]}" --out "$WORK/reports/$1.md" "${@:2}"
    ((DRY_RUN)) || { echo; cat "$WORK/reports/$1.md"; }
}

cross_dataset_scores() { # each of METHOD trained on all of FF++, scored on FF++, Celeb-DF-v2 and DFD
    local dataset detector teacher
    with_teachers
    # A missing root, then a wrong layout or split list, stops the script now, not after hours of FF++.
    for dataset in ffpp celebdf dfd; do
        extract_command "$dataset"
    done
    for dataset in ffpp celebdf dfd; do
        extract_command "$dataset"
        check "check $dataset" "${EXTRACT_CMD[@]}" --dry-run
    done
    for dataset in ffpp celebdf dfd; do
        prepare "$dataset"
    done
    train_mae
    for detector in "${DETECTORS[@]}"; do
        teacher=() # a student comes after its teacher (with_teachers)
        [[ ,${NEEDS[$detector]}, != *,train-det,* ]] || teacher=("" --teacher "$FFPP_DIR/det/$TEACHER")
        train_det "$detector" "$detector" "${teacher[@]}"
        for dataset in ffpp celebdf dfd; do
            score "$detector" "$dataset"
        done
    done
}
