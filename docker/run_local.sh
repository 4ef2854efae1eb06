#!/usr/bin/env bash
# Run the image on this machine on a folder laid out like /opt/ml, as SageMaker would.
#
#   docker/run_local.sh DIR [ARGS...]          ARGS default to `train`
#
#   DIR    made by `python docker/opt_ml.py DIR --train DATA --hp epochs=3 ...`, or any folder
#          with input/config/{hyperparameters,resourceconfig,inputdataconfig}.json and
#          input/data/<channel>/. Results land in DIR/model, DIR/output, DIR/checkpoints.
#   ARGS   `train` (what SageMaker passes), or a command to run instead, e.g. `bash`
#
# $IMAGE picks the image (default birdsed:<version>); $DOCKER_RUN_ARGS adds docker run options.
# The GPUs are passed in (--gpus all) when nvidia-smi works here. DIR's parts are mounted, not DIR
# itself, because /opt/ml/code lives in the image (SageMaker mounts the same parts).
set -euo pipefail
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"

[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { sed -n '2,14p' "$0"; exit 2; }
dir=$(cd "$1" && pwd)
shift
[[ $# -gt 0 ]] || set -- train
[[ -f $dir/input/config/resourceconfig.json ]] ||
    die "$dir/input/config/resourceconfig.json is missing: lay the folder out with docker/opt_ml.py"
image=${IMAGE:-$IMAGE_NAME:$(project_version)}
DOCKER=${DOCKER:-docker}

args=(run --rm --hostname algo-1 --shm-size "${SHM_SIZE:-2g}")
[[ -t 0 && -t 1 ]] && args+=(--interactive --tty)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    args+=(--gpus all)
    log "GPU found: running with --gpus all"
else
    log "no GPU here (nvidia-smi does not work): running on the CPU"
fi
for part in input model output checkpoints; do
    mkdir -p "$dir/$part"
    args+=(--volume "$dir/$part:/opt/ml/$part")
done
# shellcheck disable=SC2206 # word splitting of the extra options is intended
args+=(${DOCKER_RUN_ARGS:-} "$image" "$@")
log "$DOCKER ${args[*]}"
exec "$DOCKER" "${args[@]}"
