#!/usr/bin/env bash
# Push the image built by docker/build.sh to Amazon ECR and print its URI for
# `launch/submit.py --image-uri`:  <account>.dkr.ecr.<region>.amazonaws.com/birdsed:<version>
#
#   docker/push.sh [--region REGION] [--image LOCAL_IMAGE]
#
#   --region  default: $AWS_REGION, $AWS_DEFAULT_REGION, then the configured region
#   --image   default: birdsed:<version>-<revision> (this checkout's build)
#
# Creates the ECR repository `birdsed` when it is missing, logs docker in, and pushes the tags
# <version> and <version>-<revision>. Needs AWS credentials (environment, ~/.aws or a role) allowed
# sts:GetCallerIdentity and ecr:{DescribeRepositories,CreateRepository,GetAuthorizationToken} plus
# the push actions; uses the aws CLI when installed, else boto3 from the project's Python
# ($PYTHON, default .venv/bin/python). The URI is the only thing printed on stdout.
set -euo pipefail
# shellcheck source=docker/lib.sh
source "$(dirname "$0")/lib.sh"

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
version=$(project_version)
revision=$(project_revision)
local_image=$IMAGE_NAME:$version-$revision
while [[ $# -gt 0 ]]; do
    case $1 in
        --region) region=$2; shift 2 ;;
        --image) local_image=$2; shift 2 ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-$REPO_ROOT/.venv/bin/python}

"$DOCKER" image inspect "$local_image" >/dev/null 2>&1 ||
    die "no local image $local_image: build it first with docker/build.sh"
[[ $revision != *-dirty ]] ||
    log "warning: the working tree differs from $revision: pushing an image of uncommitted changes"

if aws --version >/dev/null 2>&1; then
    log "using the aws CLI"
    region=${region:-$(aws configure get region || true)}
    [[ -n $region ]] || die "no AWS region: pass --region or set AWS_REGION"
    account=$(aws sts get-caller-identity --region "$region" --query Account --output text)
    aws ecr describe-repositories --region "$region" --repository-names "$IMAGE_NAME" >/dev/null 2>&1 || {
        log "creating the ECR repository $IMAGE_NAME in $region"
        aws ecr create-repository --region "$region" --repository-name "$IMAGE_NAME" \
            --image-scanning-configuration scanOnPush=true >/dev/null
    }
    login_password() { aws ecr get-login-password --region "$region"; }
else
    [[ -x $PYTHON ]] || die "neither the aws CLI nor $PYTHON (with boto3) is available"
    log "no aws CLI: using boto3 from $PYTHON"
    ecr() { "$PYTHON" "$REPO_ROOT/docker/ecr.py" ${region:+--region "$region"} "$@"; }
    region=$(ecr region)
    account=$(ecr account)
    ecr repository "$IMAGE_NAME" >/dev/null
    login_password() { ecr login-password; }
fi

registry="$account.dkr.ecr.$region.amazonaws.com"
repository="$registry/$IMAGE_NAME"
log "logging docker in to $registry"
login_password | "$DOCKER" login --username AWS --password-stdin "$registry" >&2
for tag in "$version" "$version-$revision"; do
    "$DOCKER" tag "$local_image" "$repository:$tag"
    log "pushing $repository:$tag"
    "$DOCKER" push "$repository:$tag" >&2
done
echo "$repository:$version"
