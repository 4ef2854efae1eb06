# The birdsed training image: what SageMaker runs (`docker run IMAGE train`).
#
# Build with docker/build.sh (BuildKit is required: secrets and build mounts). The base carries
# CUDA, cuDNN, Python and the same torch release that requirements.txt pins; see README.md,
# "The image", for how the tag was verified and how to build on an AWS Deep Learning Container.
# Pinned by tag (a CI machine without registry access builds a stand-in under this name); the tag's
# published digest, which docker/test_image.sh compares after a pull, is:
# BASE_IMAGE_DIGEST=sha256:7b324d212a4450795b49edba9949b7cdc72429148a64e974334bfe5774d51385
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

# ---------------------------------------------------------------------------------------------
# wheels: builds wheels for the requirements that PyPI ships only as source (the toolkit has a
# C extension), so that the final image needs no compiler.
FROM ${BASE_IMAGE} AS wheels
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The base decides the distribution (Ubuntu for pytorch/pytorch and the AWS DLCs, Debian for the
# CI stand-in), so no one package version string fits; these build tools never reach the final
# image, so their exact versions do not change what ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && packages=(gcc libc6-dev) \
    && if ! python -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then packages+=(python3-dev); fi \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,source=requirements.txt,target=/build/requirements.txt \
    --mount=type=bind,source=constraints.txt,target=/build/constraints.txt \
    --mount=type=bind,source=docker/install_requirements.py,target=/build/install_requirements.py \
    --mount=type=secret,id=extra_ca \
    --mount=type=cache,id=birdsed-pip,target=/root/.cache/pip \
    --mount=type=tmpfs,target=/tmp \
    python /build/install_requirements.py wheels \
        --requirements /build/requirements.txt --constraints /build/constraints.txt --wheel-dir /wheels

# ---------------------------------------------------------------------------------------------
# The image: the base + the pinned requirements + the entrypoint + code/ in /opt/ml/code.
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Requirements before code: editing code/ rebuilds only the last, small layer. The pip cache is a
# build cache mount and /tmp (where the proxy CA bundle is assembled) a tmpfs: neither is in a layer.
RUN --mount=type=bind,source=requirements.txt,target=/build/requirements.txt \
    --mount=type=bind,source=constraints.txt,target=/build/constraints.txt \
    --mount=type=bind,source=docker/install_requirements.py,target=/build/install_requirements.py \
    --mount=type=bind,from=wheels,source=/wheels,target=/build/wheels \
    --mount=type=secret,id=extra_ca \
    --mount=type=cache,id=birdsed-pip,target=/root/.cache/pip \
    --mount=type=tmpfs,target=/tmp \
    python /build/install_requirements.py install \
        --requirements /build/requirements.txt --constraints /build/constraints.txt --find-links /build/wheels \
    && python -c 'import torch, torchaudio, sagemaker_training, soxr, onnx, onnxruntime, onnxscript; print("torch", torch.__version__, "torchaudio", torchaudio.__version__)'

# HF_HUB_DISABLE_TELEMETRY: huggingface_hub otherwise fetches a registry from the Hub before its first request
# (a 3 s wait when the Hub does not answer); the job asks the Hub only for the backbone's weights (docs/pretrained.md).
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAGEMAKER_PROGRAM=train.py \
    HF_HUB_DISABLE_TELEMETRY=1

COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/entrypoint.sh
COPY code/ /opt/ml/code/
WORKDIR /opt/ml/code
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]

ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="birdsed" \
      org.opencontainers.image.description="Bird sound event detection training for Amazon SageMaker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
