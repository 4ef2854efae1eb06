#!/usr/bin/env bash
# Build a stand-in for the base image, for machines that cannot pull it (no registry access), and
# give it the base's exact name so that the Dockerfile builds FROM it unchanged.
#
#   docker/standin_base.sh IMAGE      e.g. pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime
#
# What it is: Debian 12 (debootstrap) with its Python 3.11 as a virtual environment in
# /opt/conda (the real base's conda Python is 3.11 in /opt/conda/bin, first on PATH), and the
# torch, torchaudio and torchvision releases of requirements.txt from PyPI (for x86_64 those are
# the CUDA 12.8 builds, the same binaries as the cu128 wheels in the real base), plus the real
# base's environment variables, labels and working directory. No CUDA driver or GPU needed.
#
# Built once and reused: it is keyed by a hash of its recipe (the debootstrap arguments, the
# packages and pins, the image configuration, a recipe number), and rebuilt only when that changes. The debootstrap root file system and the wheels are cached in
# ${BIRDSED_CACHE:-~/.cache/birdsed}. Needs root (debootstrap), a docker engine, and a Python with
# pip for the downloads ($PYTHON, default .venv/bin/python; the host's pip configuration, proxy
# CA included, applies).
set -euo pipefail
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"

[[ $# -eq 1 ]] || die "usage: $0 IMAGE"
target=$1
DOCKER=${DOCKER:-docker}
cache=${BIRDSED_CACHE:-$HOME/.cache/birdsed}
python=${PYTHON:-$REPO_ROOT/.venv/bin/python}
suite=bookworm # Debian 12: Python 3.11, as the real base
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
pip_version=25.3 # about the pip of the real base's release (November 2025)

pin() { sed -n "s/^$1==\([^ ;#]*\).*/\1/p" "$REPO_ROOT/requirements.txt"; }
torch=$(pin torch)
torchaudio=$(pin torchaudio)
[[ -n $torch && -n $torchaudio ]] || die "requirements.txt must pin torch and torchaudio"
# torchvision's release pairs with torch's (2.9.1 -> 0.24.1): minor + 15, same patch.
IFS=. read -r _ torch_minor torch_patch <<<"$torch"
torchvision=${STANDIN_TORCHVISION:-0.$((torch_minor + 15)).${torch_patch:-0}}
packages=("pip==$pip_version" "torch==$torch" "torchaudio==$torchaudio" "torchvision==$torchvision")

# The image's configuration, as the real base's Dockerfile sets it.
changes=(
    'ENV PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/opt/conda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    'ENV NVIDIA_VISIBLE_DEVICES=all'
    'ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility'
    'ENV LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64'
    "ENV PYTORCH_VERSION=$torch"
    'LABEL com.nvidia.volumes.needed=nvidia_driver'
    'WORKDIR /workspace'
    'CMD ["/bin/bash"]'
)
# shellcheck disable=SC2054 # debootstrap takes a comma-separated package list
debootstrap_args=(--variant=minbase --include=python3,python3-venv,ca-certificates "$suite")
# Bump when the steps below change in a way the lists above do not show.
recipe=1
key=$(printf '%s\n' "$recipe" "${debootstrap_args[@]}" "${packages[@]}" "${changes[@]}" | sha256sum | cut -c1-12)
standin="birdsed-standin:$key"

if "$DOCKER" image inspect "$standin" >/dev/null 2>&1; then
    log "reusing the stand-in base $standin (built earlier on this machine)"
    "$DOCKER" tag "$standin" "$target"
    exit 0
fi

log "building a stand-in base image $standin as $target: Debian $suite, Python 3.11, ${packages[*]}"
started=$SECONDS
mkdir -p "$cache/standin" "$cache/wheels"
work=$(mktemp -d "$cache/standin/work.XXXXXX")
container="birdsed-standin-build-$$"
cleanup() {
    "$DOCKER" rm -f "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# 1. The operating system: debootstrap once, then from the cached tarball.
rootfs_tar="$cache/standin/debian-$suite-$(printf '%s\n' "${debootstrap_args[@]}" | sha256sum | cut -c1-12).tar"
if [[ ! -s $rootfs_tar ]]; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    log "debootstrap $suite from $mirror (about 2 minutes; cached in $rootfs_tar)"
    debootstrap "${debootstrap_args[@]}" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
        { tail -20 "$work/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
    tar -C "$work/rootfs" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
    rm -rf "$work/rootfs"
fi
os_image="birdsed-standin-os:$(sha256sum "$rootfs_tar" | cut -c1-12)"
if ! "$DOCKER" image inspect "$os_image" >/dev/null 2>&1; then
    "$DOCKER" import "$rootfs_tar" "$os_image" >/dev/null
fi

# 2. The wheels, downloaded on this machine (its pip configuration knows the proxy) and cached.
platforms=()
for platform in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux2010 \
    manylinux_2_5 manylinux1; do
    platforms+=(--platform "${platform}_x86_64")
done
log "downloading the wheels into $cache/wheels (about 4 GB the first time; kept for later runs)"
# (pip's warnings about this machine's own extra index folders are noise here: filtered.)
"$python" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
    --implementation cp --abi cp311 "${platforms[@]}" --dest "$cache/wheels" "${packages[@]}" \
    2> >(grep -v '^WARNING: Location .* is ignored' >&2)

# 3. Install them offline in a container, then commit it with the real base's configuration.
"$DOCKER" run --name "$container" --network none --volume "$cache/wheels:/wheels:ro" "$os_image" \
    /bin/sh -c "python3 -m venv /opt/conda \
        && /opt/conda/bin/python -m pip install --quiet --no-index --find-links /wheels ${packages[*]} \
        && rm -rf /root/.cache"
commit_args=()
for change in "${changes[@]}" "LABEL org.birdsed.standin=$target org.birdsed.standin.key=$key"; do
    commit_args+=(--change "$change")
done
"$DOCKER" commit "${commit_args[@]}" "$container" "$standin" >/dev/null
"$DOCKER" tag "$standin" "$target"
# Stand-ins of earlier pins or recipes are dead weight (gigabytes each): remove them.
{
    "$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' birdsed-standin | grep -v -x "$standin"
    "$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' birdsed-standin-os | grep -v -x "$os_image"
} | xargs -r "$DOCKER" image rm >/dev/null 2>&1 || true
log "stand-in base ready in $((SECONDS - started)) s: $standin, tagged $target"
