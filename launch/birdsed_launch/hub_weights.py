"""`--pretrained hub`: the backbone's weights from the Hugging Face Hub, staged once in S3 as the `pretrained` channel.

On this machine: ask the Hub which commit holds timm's weights of the backbone (`birdsed.hub`, the
job's own rules), and unless `s3://<default bucket>/birdsed/weights/<repo id>/<commit>/<file>` already
holds a file of that size, download it (huggingface_hub, progress bar, its usual cache) and upload it
(progress bar). The job then reads it from its `pretrained` channel: the way to pretrained weights for a
job with `--network-isolation`, and a job that never waits for the Hub. With `--local` the file is
downloaded to a local folder instead, which becomes the channel.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import boto3
from botocore.exceptions import ClientError
from tqdm.auto import tqdm

from birdsed import hub
from birdsed.sm_env import HubSettings
from birdsed_launch import checks, job_options
from birdsed_launch.checks import LaunchError, UsageError
from birdsed_launch.job_options import JobOptions

logger = logging.getLogger(__name__)

HUB = "hub"  # the value of --pretrained that asks for this
S3_PREFIX = "birdsed/weights"


def wanted(options: JobOptions) -> bool:
    return (options.pretrained or "").strip().lower() == HUB


def given_channels(options: JobOptions) -> dict[str, str]:
    """The channels given as an S3 URI or a folder: all of them but `--pretrained hub`, which is still to be fetched."""
    return {name: uri for name, uri in options.channels().items() if not (name == "pretrained" and wanted(options))}


def check_weights_source(options: JobOptions) -> None:
    """`--pretrained hub` against the hyperparameters; say what `--network-isolation` without weights means."""
    policy = job_options.pretrained_policy(options.hyperparameters)
    if wanted(options) and policy == "false":
        raise UsageError("--pretrained hub stages weights that pretrained=false would never use; drop one of them")
    if not options.network_isolation or options.local or options.pretrained or policy == "false":
        return
    backbone = job_options.backbone(options.hyperparameters)
    if policy == "true":
        raise UsageError(
            f"--network-isolation: the job cannot reach the Hugging Face Hub, and pretrained=true needs weights for "
            f"{backbone}: add --pretrained hub (stages the Hub's weights in S3 once) or --pretrained s3://..."
        )
    logger.warning(
        "--network-isolation without --pretrained: the job cannot reach the Hugging Face Hub, so %s starts from "
        "RANDOM weights. Add --pretrained hub to stage the Hub's weights in S3 (once) and pass them, or "
        "--pretrained s3://.../model.safetensors.",
        backbone,
    )


def find(backbone: str, settings: HubSettings) -> hub.HubFile:
    """The Hub's weights file of `backbone` (commit and size), or a one-line error."""
    try:
        repo = hub.hub_repo(backbone)
        if repo is None:
            raise UsageError(
                f"--pretrained hub: timm knows no Hugging Face weights for '{backbone}'; pass --pretrained s3://..."
            )
        return hub.first_contact(repo, settings)
    except hub.HubUnavailable as error:
        raise LaunchError(f"--pretrained hub: the Hugging Face Hub ({settings.endpoint}) {error}") from None


def weights_location(file: hub.HubFile, bucket: str) -> checks.S3Location:
    return checks.S3Location(bucket, f"{S3_PREFIX}/{file.repo_id}/{file.commit}/{file.filename}")


def stage_in_s3(
    options: JobOptions, session: boto3.Session, region: str, settings: HubSettings, upload: bool
) -> JobOptions:
    """`options` with `pretrained` = the S3 URI of the Hub's weights; uploaded there first unless already there.

    `upload=False` (a dry run) only names the URI. The bucket is the SageMaker SDK's default bucket,
    `sagemaker-<region>-<account>`, made if it does not exist (as the SDK does).
    """
    backbone = job_options.backbone(options.hyperparameters)
    file = find(backbone, settings)
    location = weights_location(file, f"sagemaker-{region}-{checks.check_role_arn(options.role)}")
    if not upload:
        logger.info("Dry run: the weights of %s (%s) would be staged at %s", backbone, file.name, location.uri)
    elif stored_size(session, location) == file.size:
        logger.info("Weights of %s (%s) already in %s: not uploaded again", backbone, file.name, location.uri)
    else:
        ensure_bucket(session, location.bucket, region)
        path = download_to_cache(file, settings)
        upload_file(session, path, location)
    return job_options.replace_pretrained(options, location.uri)


def stage_locally(options: JobOptions, settings: HubSettings, environ: Mapping[str, str]) -> JobOptions:
    """`--local`: the Hub's file in a plain local folder (`~/.cache/birdsed/weights/<repo id>/<commit>/`)."""
    file = find(job_options.backbone(options.hyperparameters), settings)
    cache = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "birdsed" / "weights"
    folder = cache / file.repo_id / file.commit
    logger.info("Fetching %s %s into %s", file.name, file.filename, folder)
    hub.download(file, settings, folder, progress=True)
    return job_options.replace_pretrained(options, str(folder))


def stored_size(session: boto3.Session, location: checks.S3Location) -> int | None:
    try:
        return session.client("s3").head_object(Bucket=location.bucket, Key=location.key)["ContentLength"]
    except ClientError as error:
        if checks.error_code(error) in {"404", "NoSuchKey", "NoSuchBucket"}:
            return None
        raise


def ensure_bucket(session: boto3.Session, bucket: str, region: str) -> None:
    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as error:
        if checks.error_code(error) not in {"404", "NoSuchBucket"}:
            raise
    logger.info("Creating the SageMaker default bucket s3://%s (%s) for the weights", bucket, region)
    where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **where)


def download_to_cache(file: hub.HubFile, settings: HubSettings) -> Path:
    """The file of exactly `file.commit` in huggingface_hub's cache (downloaded with its progress bar if needed)."""
    from huggingface_hub import hf_hub_download

    logger.info("Downloading %s %s from %s", file.name, file.filename, settings.endpoint)
    try:
        path = hf_hub_download(
            file.repo_id,
            file.filename,
            revision=file.commit,
            cache_dir=settings.cache_dir,
            endpoint=settings.endpoint,
            etag_timeout=settings.timeout,
            library_name="timm",
        )
    except Exception as error:  # noqa: BLE001 - any failure of the download is one line for the user
        raise LaunchError(
            f"--pretrained hub: downloading {file.name} failed: {type(error).__name__}: {error}"
        ) from None
    return Path(path)


def upload_file(session: boto3.Session, path: Path, location: checks.S3Location) -> None:
    size = os.path.getsize(path)
    logger.info("Uploading %s (%.1f MB) to %s", path.name, size / 2**20, location.uri)
    with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=path.name) as progress:
        session.client("s3").upload_file(str(path), location.bucket, location.key, Callback=progress.update)
