"""Submit a birdsed training job to Amazon SageMaker (SageMaker Python SDK v3, `ModelTrainer`).

    python launch/submit.py --train s3://BUCKET/birdclef/ --role arn:aws:iam::123456789012:role/SageMakerRole
    python launch/submit.py --instance ml.g5.2xlarge --hp epochs=40 --hp backbone=tf_efficientnetv2_s.in21k ...
    python launch/submit.py --dry-run ...     # print the CreateTrainingJob request as JSON; create nothing
    python launch/submit.py --pretrained hub --network-isolation ...  # stage the backbone's Hub weights in S3
    python launch/submit.py --local --train ./data --output-path file:///tmp/out --hp epochs=1

Everything is checked before anything is created: the instance type, S3 URIs, the role ARN, the
hyperparameters (with the training code's own rules), the region and credentials, the image in ECR,
the output bucket and that each channel holds data. A failure is one `error:` line on stderr and a
non-zero exit (2: the command is wrong; 1: the account or environment is). stdout gets only the
result: the job name and ARN, the dry-run JSON, or (--local) the path of model.tar.gz.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from birdsed import sm_env
from birdsed_launch import checks, cli, hub_weights, job_options, local_mode
from birdsed_launch.job_options import ROLE_ENV, JobOptions

if TYPE_CHECKING:
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.resources import TrainingJob
    from sagemaker.train import ModelTrainer

logger = logging.getLogger("birdsed.submit")

DEFAULTS = JobOptions()
CONFIG_HELP = f"""\
--config FILE holds any of the options above, by name (instance, instance_count, train, spot, max_run, tags,
...), plus "hyperparameters"; JSON, or YAML for .yaml/.yml files. Command-line flags override the file, and
--hp entries are merged over its hyperparameters. Example:

  {{"instance": "ml.g5.2xlarge", "spot": true, "max_run": "12h", "train": "s3://my-bucket/birdclef/",
   "tags": {{"project": "birds"}}, "hyperparameters": {{"epochs": 40, "backbone": "tf_efficientnetv2_s.in21k"}}}}

The role comes from --role, else ${ROLE_ENV}, else the config file. A --dry-run needs no AWS credentials when
--image-uri and --role are given (otherwise it reads your account id with STS to name the default image).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = cli.OneLineErrorParser(
        prog="submit.py",
        description=__doc__,
        epilog=CONFIG_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only the flags given are set, so they can override --config
    )
    data = parser.add_argument_group("data channels (S3 URIs; local folders with --local)")
    data.add_argument("--train", help="dataset (train_metadata.csv + train_audio/) or a prepared cache; required")
    data.add_argument("--validation", help="validation dataset, same layout (replaces the automatic split)")
    data.add_argument(
        "--pretrained",
        help="backbone weights (.safetensors/.pth/.pt/.bin), or 'hub': the Hugging Face Hub's weights of the backbone, "
        "uploaded once to s3://<default bucket>/birdsed/weights/ (for --network-isolation). Without it a job "
        "fetches them from the Hub itself",
    )
    data.add_argument("--noise", help="background noise recordings for augmentation")
    data.add_argument(
        "--soundscape-validation", help="labelled soundscapes: audio + soundscape_labels.csv (docs/soundscapes.md)"
    )
    data.add_argument(
        "--soundscapes", help="unlabelled soundscapes for pseudo-label rounds (hyperparameter pseudo_rounds)"
    )
    data.add_argument("--input-mode", metavar="File|FastFile", help="File copies the data first; FastFile streams")

    job = parser.add_argument_group("the job")
    job.add_argument("--instance", help=f"training instance type (default {DEFAULTS.instance})")
    job.add_argument("--instance-count", metavar="N", help="number of instances (default 1)")
    job.add_argument(
        "--nproc-per-node",
        metavar="N",
        help="training processes per instance (default: one per GPU); torchrun and DDP start on their own",
    )
    job.add_argument(
        "--image-uri", help="training image (default <account>.dkr.ecr.<region>.amazonaws.com/birdsed:<version>)"
    )
    job.add_argument("--role", help=f"SageMaker execution role ARN (or ${ROLE_ENV}, or 'role' in --config)")
    job.add_argument(
        "--hp", dest="hyperparameters", action="append", metavar="KEY=VALUE", help="hyperparameter (repeatable)"
    )
    job.add_argument("--config", metavar="FILE", help="JSON/YAML file of options and hyperparameters (see below)")
    job.add_argument(
        "--spot",
        action=argparse.BooleanOptionalAction,
        help="managed spot training, resumed from checkpoints when interrupted (default: on; --no-spot for on-demand)",
    )
    job.add_argument("--max-run", metavar="DURATION", help="time limit: 3600, 90m, 12h, 2d (default 24h)")
    job.add_argument(
        "--max-wait", metavar="DURATION", help="spot: limit including waits for capacity (default 2x max-run)"
    )
    job.add_argument("--volume-size", metavar="GB", help=f"storage volume in GB (default {DEFAULTS.volume_size})")
    job.add_argument("--job-name", help=f"job name prefix; a timestamp is appended (default {DEFAULTS.job_name})")
    job.add_argument("--tags", action="append", metavar="KEY=VALUE[,KEY=VALUE]", help="tags (repeatable)")
    job.add_argument(
        "--network-isolation", action=argparse.BooleanOptionalAction, help="no network in the container (default off)"
    )

    where = parser.add_argument_group("where results go")
    where.add_argument("--output-path", help="model and outputs (default s3://sagemaker-<region>-<role's account>)")
    where.add_argument(
        "--checkpoint-s3-uri", help="checkpoints, synced during the job (default <output-path>/<job-name>/checkpoints/)"
    )
    where.add_argument("--tensorboard-s3-uri", help="TensorBoard event files (default: not collected)")

    run = parser.add_argument_group("how to run")
    run.add_argument("--wait", action=argparse.BooleanOptionalAction, help="wait for the job and stream its logs")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the exact CreateTrainingJob request as JSON and create nothing (no AWS credentials needed "
        "when --image-uri and --role are given)",
    )
    run.add_argument(
        "--local",
        action="store_true",
        help="SDK local mode on this machine's Docker and Docker Compose (local_gpu if nvidia-smi finds a GPU)",
    )
    run.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION / your AWS config)")
    run.add_argument("--profile", help="AWS named profile")
    run.add_argument("-v", "--verbose", action="store_true", help="show the SDK's logs and tracebacks")
    return parser


def read_options(args: argparse.Namespace, environ: Mapping[str, str]) -> JobOptions:
    """Merge --config, the environment and the flags, then check everything that needs no AWS call."""
    flags = {key: value for key, value in vars(args).items() if key not in {"config", "verbose"}}
    file_values = job_options.load_config_file(args.config) if getattr(args, "config", None) else {}
    options = job_options.resolve_options(flags, file_values, environ)
    check_offline(options)
    return options


def check_offline(options: JobOptions) -> None:
    """Everything the command line alone can get wrong, in the order a user would fix it."""
    if not options.train:
        raise checks.UsageError("--train is required (the dataset's S3 URI, or a local folder with --local)")
    checks.check_job_name(options.job_name)
    checks.check_tags(options.tags)
    job_options.check_hyperparameters(options.hyperparameters)
    checks.check_hyperparameter_sizes(options.hyperparameters)
    checks.check_run_limits(options.max_run, options.instance_count)
    checks.check_backbone(job_options.backbone(options.hyperparameters))
    hub_weights.check_weights_source(options)
    if options.max_wait is not None and options.max_wait < options.max_run:
        raise checks.UsageError(f"--max-wait ({options.max_wait} s) must be at least --max-run ({options.max_run} s)")
    if options.local:
        if options.dry_run:
            raise checks.UsageError("--dry-run shows a SageMaker CreateTrainingJob request; --local creates none")
        return
    checks.check_instance_type(options.instance)
    if not options.role:
        raise checks.UsageError(f"no execution role: pass --role ARN, set {ROLE_ENV}, or put 'role' in --config")
    checks.check_role_arn(options.role)
    for name, uri in hub_weights.given_channels(options).items():
        checks.parse_s3_uri(uri, job_options.flag(name))
    for name in ("output_path", "checkpoint_s3_uri", "tensorboard_s3_uri"):
        if getattr(options, name):
            checks.parse_s3_uri(getattr(options, name), job_options.flag(name))


def complete(options: JobOptions, region: str) -> JobOptions:
    """Fill the defaults that depend on the region: output path and checkpoint location."""
    account = checks.check_role_arn(options.role)
    # The SageMaker SDK's default bucket; SageMaker adds <job-name>/output/model.tar.gz under it.
    output_path = (options.output_path or f"s3://sagemaker-{region}-{account}").rstrip("/")
    checkpoint = options.checkpoint_s3_uri or f"{output_path}/{options.job_name}/checkpoints/"
    return dataclasses.replace(options, output_path=output_path, checkpoint_s3_uri=checkpoint)


def default_image_uri(session: boto3.Session, region: str) -> str:
    try:
        account = checks.caller_account(session)
    except (ClientError, BotoCoreError) as error:
        raise checks.LaunchError(
            f"cannot read your AWS account id to name the default image ({cli.first_line(str(error))}); "
            "pass --image-uri"
        ) from None
    return f"{account}.dkr.ecr.{region}.amazonaws.com/birdsed:{job_options.project_version()}"


def check_account(options: JobOptions, session: boto3.Session, image_uri: str) -> None:
    """Read-only checks against the account: the image, the output bucket, the data."""
    checks.check_image(session, image_uri)
    checks.check_bucket(session, checks.parse_s3_uri(options.output_path, "--output-path"), "--output-path")
    for name, uri in hub_weights.given_channels(options).items():
        checks.check_channel_has_data(session, checks.parse_s3_uri(uri, job_options.flag(name)), job_options.flag(name))
    checkpoints = checks.parse_s3_uri(options.checkpoint_s3_uri, "--checkpoint-s3-uri")
    if checks.count_objects(session, checkpoints, "--checkpoint-s3-uri"):
        logger.warning(
            "%s already holds checkpoints: this job resumes from them. Use a new --job-name to start afresh.",
            options.checkpoint_s3_uri,
        )


def submit(options: JobOptions, session: boto3.Session, hub: sm_env.HubSettings | None = None) -> int:
    """Check against the account, then create the job (or print its request); returns the exit code.

    `hub`: the Hugging Face Hub for `--pretrained hub` (huggingface_hub's variables of this machine).
    """
    region = checks.check_region(session)
    options = complete(options, region)
    if not options.dry_run:
        checks.check_credentials(session)
    elif not options.image_uri:
        checks.check_credentials(session, "; or pass --image-uri for a dry run without credentials")
    image_uri = options.image_uri or default_image_uri(session, region)
    if not options.dry_run:
        check_account(options, session, image_uri)
    if hub_weights.wanted(options):  # after every check: the upload is the first thing created
        options = hub_weights.stage_in_s3(options, session, region, hub or sm_env.HubSettings(), not options.dry_run)
    trainer = make_trainer(options, image_uri, session)
    if options.dry_run:
        print(json.dumps(load_job_spec().create_training_job_request(trainer), indent=2))
        return 0
    job = start_job(trainer, options)
    print(job.training_job_name)
    print(job.training_job_arn)
    log_next_steps(options, job.training_job_name, region)
    if options.wait:
        wait_for(job)
    return 0


def load_job_spec() -> ModuleType:
    """The SDK-facing module, imported only once the cheap checks have passed (the SDK takes ~5 s)."""
    from birdsed_launch import job_spec

    return job_spec


def make_trainer(options: JobOptions, image_uri: str, session: boto3.Session) -> ModelTrainer:
    """The SDK's trainer; for a real job the SDK also checks the role with IAM (read-only) here."""
    from sagemaker.core.helper.iam_role_resolver import RoleValidationError
    from sagemaker.core.helper.session_helper import Session

    spec = load_job_spec()
    try:
        with spec.role_validation_skipped() if options.dry_run else contextlib.nullcontext():
            return spec.sagemaker_trainer(options, image_uri, Session(boto_session=session))
    except RoleValidationError as error:  # its message: what is wrong, why, then a page of advice
        raise checks.LaunchError(" ".join(cli.first_lines(str(error), 2))) from None


def start_job(trainer: ModelTrainer, options: JobOptions) -> TrainingJob:
    try:
        return load_job_spec().start(trainer)
    except ClientError as error:
        if checks.error_code(error) == "ResourceLimitExceeded":
            kind = "spot training job usage" if options.spot else "training job usage"
            raise checks.LaunchError(
                f"SageMaker quota exceeded ({cli.first_line(error.response['Error'].get('Message', ''))}); "
                f"ask for more '{options.instance} for {kind}' in Service Quotas"
                + (", or try --no-spot" if options.spot else "")
            ) from None
        raise


def log_next_steps(options: JobOptions, job_name: str, region: str) -> None:
    logger.info("Submitted %s (%s, %s).", job_name, options.instance, "spot" if options.spot else "on-demand")
    logger.info("Model: %s/%s/output/model.tar.gz", options.output_path, job_name)
    logger.info("Checkpoints: %s", options.checkpoint_s3_uri)
    logger.info(
        "Watch: aws sagemaker describe-training-job --region %s --training-job-name %s "
        "--query '{status: TrainingJobStatus, secondary: SecondaryStatus, metrics: FinalMetricDataList}'",
        region,
        job_name,
    )


def wait_for(job: TrainingJob) -> None:
    """Stream the job's CloudWatch logs until it ends (the SDK's own waiter); a failed job is an error."""
    from sagemaker.core.utils.exceptions import FailedStatusError

    logging.getLogger("sagemaker.core.resources").setLevel(logging.INFO)  # the waiter logs the job's lines
    try:
        job.wait(logs=True)
    except FailedStatusError as error:
        raise checks.LaunchError(f"training job {job.training_job_name} failed: {job.failure_reason}") from error
    except KeyboardInterrupt:
        raise checks.LaunchError(
            f"stopped waiting; the job keeps running (aws sagemaker stop-training-job --training-job-name "
            f"{job.training_job_name})"
        ) from None


def run_local(
    options: JobOptions, make_session: Callable[[], boto3.Session], environ: Mapping[str, str] | None = None
) -> int:
    """SDK local mode: the image on this machine's Docker; prints the path of model.tar.gz."""
    # Every channel but `--pretrained hub` (still to be fetched) is a folder or S3 URI to check now.
    options = dataclasses.replace(options, **local_mode.resolve_channels(hub_weights.given_channels(options)))
    output_dir = local_mode.local_path(options.output_path or local_mode.DEFAULT_OUTPUT, "--output-path")
    image_uri = options.image_uri or f"birdsed:{job_options.project_version()}"
    local_mode.check_docker()
    local_mode.check_local_image(image_uri)
    if hub_weights.wanted(options):  # after the checks: the download is the slow part
        environ = os.environ if environ is None else environ
        options = hub_weights.stage_locally(options, sm_env.hub_settings(environ), environ)
    instance_type = "local_gpu" if local_mode.gpu_available() else "local"
    logger.info("Local mode: %s as %s; results in %s", image_uri, instance_type, output_dir)

    session = local_aws_session(options, image_uri, make_session)
    root = local_mode.make_container_root(output_dir)
    trainer = load_job_spec().local_trainer(options, image_uri, instance_type, root, session)
    try:
        trainer.train(wait=True, logs=True)
    except RuntimeError as error:
        reason = local_mode.failure_reason(root) or cli.first_line(str(error))
        raise checks.LaunchError(f"local training failed: {reason} (files kept in {root})") from None
    print(local_mode.collect_artifacts(root, output_dir))
    return 0


def local_aws_session(options: JobOptions, image_uri: str, make_session: Callable[[], boto3.Session]) -> Session | None:
    """A SageMaker SDK session when local mode needs AWS: to download S3 channels or pull an ECR image."""
    if not checks.ECR_IMAGE.fullmatch(image_uri) and not any(
        uri.startswith("s3://") for uri in options.channels().values()
    ):
        return None
    from sagemaker.core.helper.session_helper import Session

    boto_session = make_session()
    checks.check_region(boto_session)
    checks.check_credentials(boto_session)
    return Session(boto_session=boto_session)


def main(argv: Sequence[str] | None = None, session: boto3.Session | None = None) -> int:
    """Entry point; `session` lets tests (and embedding code) supply their own boto3 session."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    cli.configure_logging(verbose)

    def body() -> int:
        options = read_options(args, os.environ)

        def make_session() -> boto3.Session:
            # botocore reads AWS_DEFAULT_REGION only; AWS_REGION (the newer AWS SDKs' name) is honoured too.
            region = options.region or os.environ.get("AWS_REGION") or None
            return session or boto3.Session(region_name=region, profile_name=options.profile)

        if options.local:
            return run_local(options, make_session, os.environ)
        return submit(options, make_session(), sm_env.hub_settings(os.environ))

    return cli.run_command(body, verbose)


if __name__ == "__main__":
    sys.exit(main())
