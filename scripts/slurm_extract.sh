#!/usr/bin/env bash
# Preprocess one dataset across machines with a Slurm job array: array task i of N runs
# `lrerr-tools extract --part i/N`; one job after them all merges the parts, then runs
# landmarks and shard (which need every face: the key region is fitted to all real train faces).
#
#   scripts/slurm_extract.sh --dataset ffpp --parts 16 --ffpp /data/FaceForensics++ --work work
#
# --dataset is ffpp, celebdf or dfd. The jobs run the very extract the protocol scripts run
# (same settings, same WORK/<data>/extract), so a protocol script started afterwards finds the
# data complete and goes on to training. SBATCH_ARGS goes to every sbatch (e.g. "--partition
# gpu --gres gpu:1 --time 4:00:00", with EXTRACT_ARGS="--device cuda"); job logs go to
# WORK/logs/. A failed task leaves the final job waiting: fix it and submit again, and the
# videos already done are skipped. Any other scheduler: see "Several machines" in docs/usage.md.

source "$(dirname "$0")/lib.sh"

dataset= parts= task=
forwarded=()
while (($#)); do
    case $1 in
        --dataset | --parts | --task)
            (($# >= 2)) || die "$1 needs a value"
            printf -v "${1#--}" %s "$2"
            shift 2
            ;;
        *)
            forwarded+=("$1")
            shift
            ;;
    esac
done
parse_args "${forwarded[@]}"
case $dataset in ffpp | celebdf | dfd) ;; *) die "--dataset must be ffpp, celebdf or dfd (got '$dataset')" ;; esac
[[ $parts =~ ^[1-9][0-9]*$ ]] || die "--parts must be a positive number (got '$parts')"

case $task in
    extract) # one array task
        [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || die "--task extract runs inside the Slurm array (no SLURM_ARRAY_TASK_ID)"
        extract_command "$dataset"
        step "extract $dataset part $SLURM_ARRAY_TASK_ID/$parts" "${EXTRACT_CMD[@]}" \
            --part "$SLURM_ARRAY_TASK_ID/$parts"
        ;;
    finish) # the job after the array
        step "merge $dataset" lrerr-tools merge "$(data_dir "$dataset")/extract"
        after_extract "$dataset"
        ;;
    "") # on the login node: check the settings, then submit
        command -v sbatch >/dev/null ||
            die "sbatch not found: run this on a Slurm login node (other schedulers: \"Several machines\" in docs/usage.md)"
        extract_command "$dataset"
        mkdir -p "$WORK"
        WORK=$(cd "$WORK" && pwd) # the jobs may start elsewhere
        logs=$WORK/logs
        mkdir -p "$logs"
        self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
        job() { printf '%q ' "$self" --task "$1" --dataset "$dataset" --parts "$parts" "${forwarded[@]}" --work "$WORK"; }
        read -ra sbatch_extra <<<"${SBATCH_ARGS:-}"
        array=$(sbatch --parsable --job-name "lrerr-extract-$dataset" --array "1-$parts" \
            --output "$logs/extract-$dataset-%A-%a.out" "${sbatch_extra[@]}" --wrap "$(job extract)")
        array=${array%%;*} # --parsable prints "id;cluster" on federated clusters
        finish=$(sbatch --parsable --job-name "lrerr-finish-$dataset" --dependency "afterok:$array" \
            --output "$logs/finish-$dataset-%j.out" "${sbatch_extra[@]}" --wrap "$(job finish)")
        echo "submitted: array job $array ($parts extract parts), then job ${finish%%;*} (merge, landmarks," \
            "shard); logs in $logs"
        ;;
    *) die "--task must be extract or finish (got '$task')" ;;
esac
