"""The training job as the SageMaker Python SDK v3 sees it: a `ModelTrainer` built from `JobOptions`.

The image is "bring your own container": no `SourceCode`, so SageMaker runs the image's own
entrypoint (the sagemaker-training toolkit's `train`), not the SDK's driver scripts. Everything
sent is built here, once, for the real job, the dry run and local mode alike.

Importing this module imports the SDK (about 5 s), so the launcher imports it only after its checks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sagemaker.core.helper.session_helper import Session
from sagemaker.core.resources import TrainingJob
from sagemaker.core.training.configs import (
    Channel,
    CheckpointConfig,
    Compute,
    DataSource,
    InputData,
    MetricDefinition,
    Networking,
    OutputDataConfig,
    S3DataSource,
    StoppingCondition,
    Tag,
    TensorBoardOutputConfig,
)
from sagemaker.train import ModelTrainer
from sagemaker.train.model_trainer import Mode

from birdsed_launch.job_options import JobOptions

CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/data/tensorboard"

# The one metric line per epoch (birdsed.training.job.format_metrics):
#   epoch=N train_loss=X val_loss=X val_cmap=X val_auc=X lr=X [val_soundscape_auc=X val_soundscape_cmap=X] [round=R]
# Each regex spells the line from its start to the field it captures, so no other log line can feed a
# metric. A field that is not a number (nan when there is no validation data) is simply not recorded.
LINE_FIELDS = ("epoch", "train_loss", "val_loss", "val_cmap", "val_auc", "lr")
SOUNDSCAPE_FIELDS = ("val_soundscape_auc", "val_soundscape_cmap")  # with a soundscape_validation channel
METRIC_NAMES = (*LINE_FIELDS, *SOUNDSCAPE_FIELDS, "round")
NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
ANY_VALUE = r"\S+"


def metric_regex(name: str) -> str:
    fields = [f"{field}={NUMBER if field == name else ANY_VALUE}" for field in LINE_FIELDS]
    if name in SOUNDSCAPE_FIELDS:
        fields += [f"{field}={NUMBER if field == name else ANY_VALUE}" for field in SOUNDSCAPE_FIELDS]
    elif name == "round":
        fields[-1] += r"(?: val_soundscape_auc=\S+ val_soundscape_cmap=\S+)?"
        fields.append(f"round={NUMBER}")
    return r"\b" + " ".join(fields)


METRIC_REGEXES = {name: metric_regex(name) for name in METRIC_NAMES}


def metric_definitions() -> list[MetricDefinition]:
    return [MetricDefinition(name=name, regex=regex) for name, regex in METRIC_REGEXES.items()]


def s3_channel(name: str, uri: str, input_mode: str) -> Channel:
    """A channel built by hand: `InputData` would force InputMode File, and FastFile must pass."""
    source = S3DataSource(s3_data_type="S3Prefix", s3_uri=uri, s3_data_distribution_type="FullyReplicated")
    return Channel(channel_name=name, data_source=DataSource(s3_data_source=source), input_mode=input_mode)


def compute(options: JobOptions, instance_type: str) -> Compute:
    # Multi-host training (torchrun settings) will extend this and `environment` below.
    return Compute(
        instance_type=instance_type,
        instance_count=options.instance_count,
        volume_size_in_gb=options.volume_size,
        enable_managed_spot_training=options.spot if not options.local else None,
    )


def stopping_condition(options: JobOptions) -> StoppingCondition:
    return StoppingCondition(
        max_runtime_in_seconds=options.max_run,
        max_wait_time_in_seconds=options.spot_max_wait if options.spot else None,
    )


def environment(options: JobOptions) -> dict[str, str]:
    """Container environment variables; none yet (the place for distribution settings)."""
    return {}


def tags(options: JobOptions) -> list[Tag] | None:
    return [Tag(key=key, value=value) for key, value in options.tags.items()] or None


def sagemaker_trainer(options: JobOptions, image_uri: str, session: Session) -> ModelTrainer:
    """The trainer for a SageMaker training job; `options` are already checked and complete."""
    trainer = ModelTrainer(
        training_mode=Mode.SAGEMAKER_TRAINING_JOB,
        sagemaker_session=session,
        role=options.role,
        base_job_name=options.job_name,
        training_image=image_uri,
        compute=compute(options, options.instance),
        stopping_condition=stopping_condition(options),
        output_data_config=OutputDataConfig(s3_output_path=options.output_path, compression_type="GZIP"),
        input_data_config=[s3_channel(name, uri, options.input_mode) for name, uri in options.channels().items()],
        checkpoint_config=CheckpointConfig(s3_uri=options.checkpoint_s3_uri, local_path=CHECKPOINT_LOCAL_PATH),
        training_input_mode=options.input_mode,
        hyperparameters=dict(options.hyperparameters),
        environment=environment(options),
        networking=Networking(enable_network_isolation=options.network_isolation),
        tags=tags(options),
    )
    trainer.with_metric_definitions(metric_definitions())
    if options.tensorboard_s3_uri:
        trainer.with_tensorboard_output_config(
            TensorBoardOutputConfig(s3_output_path=options.tensorboard_s3_uri, local_path=TENSORBOARD_LOCAL_PATH)
        )
    return trainer


def local_trainer(
    options: JobOptions, image_uri: str, instance_type: str, container_root: Path, session: Session | None
) -> ModelTrainer:
    """The trainer for SDK local mode: the same image and hyperparameters, run by docker compose here.

    Local folders become channels mounted into the container; S3 channels are downloaded first
    (which needs `session`). The SDK writes config files, compose file and artifacts under
    `container_root`.
    """
    channels = [
        s3_channel(name, source, "File")
        if source.startswith("s3://")
        else InputData(channel_name=name, data_source=source)
        for name, source in options.channels().items()
    ]
    return ModelTrainer(
        training_mode=Mode.LOCAL_CONTAINER,
        sagemaker_session=session,
        base_job_name=options.job_name,
        training_image=image_uri,
        compute=compute(options, instance_type),
        stopping_condition=stopping_condition(options),
        input_data_config=channels,
        hyperparameters=dict(options.hyperparameters),
        environment=environment(options),
        local_container_root=str(container_root),
    )


@contextlib.contextmanager
def role_validation_skipped() -> Iterator[None]:
    """Without this, `ModelTrainer` checks the role with IAM calls, which a dry run must not need.

    `SAGEMAKER_VALIDATE_ROLE` is the SDK's only switch for it (sagemaker.core.helper.iam_role_resolver).
    """
    previous = os.environ.get("SAGEMAKER_VALIDATE_ROLE")
    os.environ["SAGEMAKER_VALIDATE_ROLE"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SAGEMAKER_VALIDATE_ROLE", None)
        else:
            os.environ["SAGEMAKER_VALIDATE_ROLE"] = previous


def create_training_job_request(trainer: ModelTrainer) -> dict:
    """The CreateTrainingJob parameters exactly as `trainer.train()` would send them, sending nothing.

    This is the SDK's own request builder in its boto3 form (the SDK's AWS Batch queue submits the
    same payload); only the job name's timestamp differs from a later real submission.
    """
    return trainer._create_training_job_args(boto3=True)


def start(trainer: ModelTrainer) -> TrainingJob:
    """CreateTrainingJob, without waiting; returns the job resource (name, ARN, `wait`)."""
    trainer.train(wait=False, logs=False)
    return trainer._latest_training_job
