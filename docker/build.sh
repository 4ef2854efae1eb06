#!/usr/bin/env bash
# Build the training image and tag it birdsed:<version> and birdsed:<version>-<git revision>.
#
#   docker/build.sh [--base-image IMAGE] [--ca-file PEM] [-- EXTRA DOCKER BUILD ARGS...]
#
#   --base-image IMAGE  another base (same torch release as requirements.txt), e.g. an AWS DLC;
#                       default: the Dockerfile's BASE_IMAGE (also settable as $BASE_IMAGE)
#   --ca-file PEM       extra CA certificates for pip behind a TLS-inspecting proxy, passed as the
#                       BuildKit secret `extra_ca` (also settable as $EXTRA_CA_FILE); never stored
#                       in the image
#
# Prints the tags it made, one a line, on stdout. $IMAGE_NAME changes the name (default birdsed).
set -euo pipefail
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"

base_image=${BASE_IMAGE:-$DEFAULT_BASE_IMAGE}
ca_file=${EXTRA_CA_FILE:-}
extra=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --base-image) base_image=$2; shift 2 ;;
        --ca-file) ca_file=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

pick_docker
version=$(project_version)
revision=$(project_revision)
[[ -n $version ]] || die "cannot read __version__ from code/birdsed/__init__.py"
tags=("$IMAGE_NAME:$version" "$IMAGE_NAME:$version-$revision")

args=(--progress=plain --build-arg "BASE_IMAGE=$base_image" --build-arg "VERSION=$version"
    --build-arg "REVISION=$revision")
if [[ -n $ca_file ]]; then
    [[ -s $ca_file ]] || die "--ca-file $ca_file is not a readable, non-empty file"
    args+=(--secret "id=extra_ca,src=$ca_file")
fi
for tag in "${tags[@]}"; do
    args+=(--tag "$tag")
done

previous=$("$DOCKER" image inspect --format '{{.Id}}' "${tags[@]}" 2>/dev/null || true)
log "building ${tags[*]} FROM $base_image with $DOCKER"
started=$SECONDS
docker_build "${args[@]}" "${extra[@]}" "$REPO_ROOT"
# The images these tags named before are now untagged: remove them (not while still in use).
sort -u <<<"$previous" | while read -r id; do
    if [[ -n $id && $("$DOCKER" image inspect --format '{{len .RepoTags}}' "$id" 2>/dev/null) == 0 ]]; then
        "$DOCKER" image rm "$id" >/dev/null 2>&1 || true
    fi
done
log "built in $((SECONDS - started)) s: $("$DOCKER" image inspect --format '{{.Size}}' "${tags[0]}" \
    | awk '{printf "%.2f GB", $1 / 1e9}') uncompressed"
printf '%s\n' "${tags[@]}"
