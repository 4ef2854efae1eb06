# shellcheck shell=bash
# Shared by the docker/*.sh scripts (sourced, not run): logging, the project's version and
# revision, and a docker CLI that can build the Dockerfile.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE_NAME=${IMAGE_NAME:-birdsed}
export DEFAULT_BASE_IMAGE
DEFAULT_BASE_IMAGE=$(sed -n 's/^ARG BASE_IMAGE=//p' "$REPO_ROOT/Dockerfile")
export BASE_IMAGE_DIGEST
BASE_IMAGE_DIGEST=$(sed -n 's/^# BASE_IMAGE_DIGEST=//p' "$REPO_ROOT/Dockerfile")

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

project_version() {
    sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO_ROOT/code/birdsed/__init__.py"
}

# Short git revision, with -dirty when a file that goes into the image differs from HEAD.
project_revision() {
    local revision
    if ! revision=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null); then
        echo nogit
        return
    fi
    if [[ -n $(git -C "$REPO_ROOT" status --porcelain -- Dockerfile .dockerignore requirements.txt \
        constraints.txt docker code 2>/dev/null) ]]; then
        revision="$revision-dirty"
    fi
    echo "$revision"
}

# Can this docker CLI build with BuildKit (the Dockerfile uses build secrets and mounts)? Yes with
# the buildx plugin, or with a 18.09-22.x CLI's built-in BuildKit client (DOCKER_BUILDKIT=1, e.g.
# Debian 12's docker.io 20.10). A 23+ CLI without buildx falls back to the legacy builder: no.
docker_can_buildkit() {
    local cli=$1 version major
    "$cli" buildx version >/dev/null 2>&1 && return 0
    version=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)
    major=${version%%.*}
    [[ $major =~ ^[0-9]+$ ]] && ((major >= 18 && major < 23))
}

# Sets DOCKER to the first docker CLI on this machine that can build the image.
pick_docker() {
    local candidate
    for candidate in ${DOCKER:-} "$(command -v docker || true)" /usr/bin/docker /usr/local/bin/docker; do
        if [[ -n $candidate && -x $candidate ]] && docker_can_buildkit "$candidate"; then
            DOCKER=$candidate
            export DOCKER
            return 0
        fi
    done
    die "no docker CLI here can build with BuildKit: install the buildx plugin (or Debian's docker.io)"
}

# The build command of $DOCKER: buildx, or the classic CLI with its built-in BuildKit.
docker_build() {
    if "$DOCKER" buildx version >/dev/null 2>&1; then
        "$DOCKER" buildx build --load "$@"
    else
        DOCKER_BUILDKIT=1 "$DOCKER" build "$@"
    fi
}
