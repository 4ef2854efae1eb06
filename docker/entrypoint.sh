#!/usr/bin/env bash
# The image's ENTRYPOINT.
#
#   (no argument)   SageMaker SDK v3 local mode: run the sagemaker-training toolkit's `train`
#   train           SageMaker and SDK v2 local mode: the same
#   anything else   executed as given (debugging), e.g. `docker run IMAGE python -c 'import torch'`
#
# Why this script stays PID 1 rather than `exec train`: `docker stop` (a stopped job, an
# interrupted spot job) sends SIGTERM to PID 1 only, then SIGKILL when the grace period ends.
# The toolkit installs no signal handler and does not forward signals to the `python train.py`
# it starts, and the kernel drops signals that PID 1 has no handler for: with `exec train` the
# SIGTERM reaches nobody and the job is killed without a chance to save. So this script traps
# SIGTERM and SIGINT and sends them to the training process (the toolkit's children), not to
# the toolkit: the toolkit keeps waiting for its child, records the result (output/success or
# output/failure) and exits with its code, which becomes the container's exit code.
set -euo pipefail

toolkit=""

# Pids of the toolkit's children, read from /proc (the base images carry no procps).
training_processes() {
    local stat_file stat rest state ppid
    for stat_file in /proc/[0-9]*/stat; do
        { stat=$(<"$stat_file"); } 2>/dev/null || continue
        rest=${stat##*) } # the fields after "pid (comm) "; comm may contain spaces
        read -r state ppid _ <<<"$rest"
        if [[ $ppid == "$toolkit" && $state != Z ]]; then
            stat_file=${stat_file#/proc/}
            echo "${stat_file%/stat}"
        fi
    done
}

forward() {
    local signal=$1 targets
    targets=$(training_processes)
    if [[ -z $targets ]]; then
        targets=$toolkit # still setting up: there is nothing to save yet, stop the toolkit
    fi
    echo "entrypoint: received SIG$signal, sending it to the training process ($targets)" >&2
    # shellcheck disable=SC2086 # one pid per word
    kill -s "$signal" $targets 2>/dev/null || true
}

run_toolkit() {
    if ! command -v train >/dev/null 2>&1; then
        echo "entrypoint: the sagemaker-training toolkit's 'train' command is not installed" >&2
        exit 127
    fi
    trap 'forward TERM' TERM
    trap 'forward INT' INT
    train &
    toolkit=$!
    local status
    # `wait` returns early (status > 128) when a trapped signal arrives: wait again until the
    # toolkit has really exited.
    while true; do
        status=0
        wait "$toolkit" || status=$?
        kill -0 "$toolkit" 2>/dev/null || break
    done
    exit "$status"
}

if [[ $# -eq 0 ]]; then
    run_toolkit
elif [[ $1 == train ]]; then
    if [[ $# -gt 1 ]]; then
        echo "entrypoint: ignoring the arguments after 'train': ${*:2}" >&2
    fi
    run_toolkit
else
    exec "$@"
fi
