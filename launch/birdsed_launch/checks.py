"""Checks the launcher runs on the user's machine before it creates anything.

botocore checks a request's types and required members, and moto accepts nearly anything, so what
they let through (instance types, URI and ARN shapes, names, a missing region, credentials or image)
is checked here, each failure being one line that says what to do. `UsageError` is a mistake in the
command (exit 2); `LaunchError` is a problem with the account or the environment (exit 1).
"""

from __future__ import annotations

import difflib
import functools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import boto3
import botocore.session
from botocore.exceptions import ClientError

logger = logging.getLogger(__name__)

# Bucket names: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit.
S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?")
# The RoleArn pattern of the SageMaker API, anchored.
ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::(?P<account>\d{12}):role/?[a-zA-Z_0-9+=,.@\-/]+")
# The TrainingJobName pattern of the SageMaker API.
JOB_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
# The SDK appends "-YYYYmmddHHMMSS" to the name prefix and cuts the result at 63 characters.
JOB_NAME_PREFIX_MAX = 63 - len("-20260101000000")
ECR_IMAGE = re.compile(
    r"(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repository>[a-z0-9._/-]+)(?::(?P<tag>[\w.-]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
# The TagKey / TagValue patterns of the SageMaker API (letters, spaces, digits and _.:/=+-@).
TAG_TEXT = re.compile(r"[\w\s.:/=+\-@]*")
ACCESS_DENIED = {"AccessDenied", "AccessDeniedException", "403", "Forbidden"}
# StoppingCondition.MaxRuntimeInSeconds: "The maximum value is 28 days" (SageMaker API reference).
MAX_RUN_SECONDS = 28 * 86400
# The API sets no maximum for InstanceCount; accounts get a quota per instance type (often 0-8 until raised).
# Beyond this the count is a typo far more often than a raised quota (birdsed's data-parallel jobs gain
# nothing from hundreds of hosts).
MAX_INSTANCE_COUNT = 100


class LaunchError(Exception):
    """Something in the account or environment stops the job; the message is the one line shown."""

    exit_code = 1


class UsageError(LaunchError):
    """The command itself is wrong (a flag value, the config file, a hyperparameter)."""

    exit_code = 2


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def as_prefix(self) -> S3Location:
        """The same location as a "folder": the key ends with "/" (or is empty, the bucket's root)."""
        return S3Location(self.bucket, self.key if not self.key or self.key.endswith("/") else self.key + "/")


def parse_s3_uri(uri: str, option: str) -> S3Location:
    """Split `s3://bucket/key`; `option` names the flag in the error."""
    match = S3_URI.fullmatch(uri or "")
    if not match:
        raise UsageError(f"{option} '{uri}' is not an S3 URI (expected s3://bucket/prefix)")
    return S3Location(match["bucket"], match["key"] or "")


def check_role_arn(role: str) -> str:
    """Return the role's account id; a role name alone is not accepted (the API needs the ARN)."""
    match = ROLE_ARN.fullmatch(role or "")
    if not match or len(role) > 2048:
        raise UsageError(
            f"--role '{role}' is not an IAM role ARN (expected arn:aws:iam::<12-digit account>:role/<name>)"
        )
    return match["account"]


@functools.cache
def training_instance_types() -> tuple[str, ...]:
    """The API's `TrainingInstanceType` enum, from botocore's bundled service model."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    return tuple(model.shape_for("TrainingInstanceType").enum)


def check_instance_type(instance_type: str) -> None:
    known = training_instance_types()
    if instance_type in known:
        return
    close = difflib.get_close_matches(instance_type, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else " (e.g. ml.g5.xlarge)"
    raise UsageError(f"--instance '{instance_type}' is not a SageMaker training instance type{hint}")


@functools.cache
def hyperparameter_limits() -> tuple[int, int, int]:
    """(entries, key characters, value characters) the API accepts, from botocore's bundled service model."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    return (
        model.shape_for("HyperParameters").metadata["max"],
        model.shape_for("HyperParameterKey").metadata["max"],
        model.shape_for("HyperParameterValue").metadata["max"],
    )


def check_hyperparameter_sizes(hyperparameters: Mapping[str, str]) -> None:
    """botocore does not check maximum lengths; SageMaker refuses the request when they are exceeded."""
    entries, key_max, value_max = hyperparameter_limits()
    if len(hyperparameters) > entries:
        raise UsageError(f"{len(hyperparameters)} hyperparameters given; SageMaker accepts at most {entries}")
    for key, value in hyperparameters.items():
        if len(key) > key_max:
            raise UsageError(f"hyperparameter name '{key[:40]}...' has {len(key)} characters; at most {key_max}")
        if len(value) > value_max:
            raise UsageError(
                f"hyperparameter '{key}' has a value of {len(value):,} characters; SageMaker accepts at most "
                f"{value_max:,} per value"
            )


def check_run_limits(max_run: int, instance_count: int) -> None:
    """Limits the API model does not carry: SageMaker documents them, and refuses the job beyond them."""
    if max_run > MAX_RUN_SECONDS:
        raise UsageError(
            f"--max-run is {max_run / 86400:g} days; SageMaker training jobs run at most 28 days (MaxRuntimeInSeconds "
            f"{MAX_RUN_SECONDS}); checkpoints let a longer training continue in a new job with the same --job-name"
        )
    if instance_count > MAX_INSTANCE_COUNT:
        raise UsageError(
            f"--instance-count {instance_count:,} is more than {MAX_INSTANCE_COUNT} instances; SageMaker's quotas for "
            "training instances are far lower unless raised (Service Quotas: '<instance type> for training job usage')"
        )


def check_backbone(name: str) -> None:
    """The backbone name, with timm, before a job is created: a typo otherwise fails minutes into the job.

    timm (and torch) belong to the training image; a launcher-only environment may lack them, and
    then the job checks the name when it starts.
    """
    try:
        import timm
    except ImportError:
        logger.info("note: timm is not installed here, so the backbone '%s' is checked when the job starts", name)
        return
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else " (see timm.list_models(), e.g. efficientnet_b0)"
    raise UsageError(f"hyperparameter backbone '{name}' is not a timm model{hint}")


def check_job_name(prefix: str) -> None:
    if not JOB_NAME.fullmatch(prefix or "") or len(prefix) > JOB_NAME_PREFIX_MAX:
        raise UsageError(
            f"--job-name '{prefix}' must be 1-{JOB_NAME_PREFIX_MAX} letters, digits and hyphens, starting and "
            "ending with a letter or digit (SageMaker appends a timestamp)"
        )


def check_tags(tags: Mapping[str, str]) -> None:
    if len(tags) > 50:
        raise UsageError(f"--tags: at most 50 tags, got {len(tags)}")
    for key, value in tags.items():
        if not (1 <= len(key) <= 128 and len(value) <= 256 and TAG_TEXT.fullmatch(key) and TAG_TEXT.fullmatch(value)):
            raise UsageError(
                f"--tags '{key}={value}': keys have 1-128 and values 0-256 characters among letters, digits, "
                "spaces and _ . : / = + - @"
            )


def check_region(session: boto3.Session) -> str:
    if not session.region_name:
        raise LaunchError(
            "no AWS region: pass --region, set AWS_REGION (or AWS_DEFAULT_REGION), or run 'aws configure'"
        )
    return session.region_name


def check_credentials(session: boto3.Session, why: str = "") -> None:
    if session.get_credentials() is None:
        raise LaunchError(
            "no AWS credentials found: run 'aws configure' or 'aws sso login', or set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY{why}"
        )


def caller_account(session: boto3.Session) -> str:
    """The caller's account id (STS GetCallerIdentity, a read that needs no permission)."""
    return session.client("sts").get_caller_identity()["Account"]


def error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def check_image(session: boto3.Session, image_uri: str) -> None:
    """Fail early when an ECR image's repository or tag does not exist; other registries are not checked."""
    match = ECR_IMAGE.fullmatch(image_uri)
    if not match:
        logger.info("Image %s is not in ECR; not checked.", image_uri)
        return
    image_id = {"imageDigest": match["digest"]} if match["digest"] else {"imageTag": match["tag"] or "latest"}
    ecr = session.client("ecr", region_name=match["region"])
    try:
        ecr.describe_images(registryId=match["account"], repositoryName=match["repository"], imageIds=[image_id])
    except ClientError as error:
        code = error_code(error)
        if code == "RepositoryNotFoundException":
            raise LaunchError(
                f"image {image_uri}: ECR repository '{match['repository']}' does not exist in account "
                f"{match['account']} ({match['region']}); build and push the image (docker/build.sh, "
                "docker/push.sh) or pass --image-uri"
            ) from None
        if code == "ImageNotFoundException":
            raise LaunchError(
                f"image {image_uri} not found: repository '{match['repository']}' has no "
                f"{next(iter(image_id.values()))}; push it (docker/push.sh) or pass --image-uri"
            ) from None
        if code not in ACCESS_DENIED:
            raise
        logger.warning("cannot check image %s (%s); submitting anyway.", image_uri, code)


def check_bucket(session: boto3.Session, location: S3Location, option: str) -> None:
    """Fail early when a bucket the job writes to does not exist (the job would fail only at its end)."""
    try:
        session.client("s3").head_bucket(Bucket=location.bucket)
    except ClientError as error:
        code = error_code(error)
        if code in {"404", "NoSuchBucket"}:
            raise LaunchError(
                f"{option} {location.uri}: bucket '{location.bucket}' does not exist; create it "
                f"('aws s3 mb s3://{location.bucket}') or pass another {option}"
            ) from None
        if code not in ACCESS_DENIED:
            raise
        logger.warning("cannot check bucket %s (%s); the job's role may still reach it.", location.bucket, code)


def count_objects(session: boto3.Session, location: S3Location, option: str, limit: int = 1) -> int | None:
    """How many objects (up to `limit`) lie under an S3 prefix; None when the caller may not list it."""
    try:
        response = session.client("s3").list_objects_v2(Bucket=location.bucket, Prefix=location.key, MaxKeys=limit)
    except ClientError as error:
        code = error_code(error)
        if code == "NoSuchBucket":
            raise LaunchError(f"{option} {location.uri}: bucket '{location.bucket}' does not exist") from None
        if code not in ACCESS_DENIED:
            raise
        logger.warning("cannot list %s (%s); the job's role may still read it.", location.uri, code)
        return None
    return response.get("KeyCount", 0)


def check_channel_has_data(session: boto3.Session, location: S3Location, option: str) -> None:
    """An empty channel makes SageMaker fail the job minutes after it starts; say so now."""
    if count_objects(session, location, option) == 0:
        raise LaunchError(
            f"{option} {location.uri}: no objects under this prefix; upload the data first "
            f"(python launch/upload.py DIR {location.uri})"
        )
