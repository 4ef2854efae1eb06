"""launch/submit.py against a real moto server: the request SageMaker receives, the dry run, every early error."""

from __future__ import annotations

import json
import logging
import re

import botocore.session
import pytest
from botocore.validate import ParamValidator

from birdsed.training.job import format_metrics
from birdsed_launch import job_spec, submit

pytest_plugins = ["moto_aws"]

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's own account id, which STS GetCallerIdentity returns
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"

DATA_BUCKET = "birds-data"
OUTPUT_BUCKET = "birds-out"
DEFAULT_BUCKET = f"sagemaker-{REGION}-{ACCOUNT}"


@pytest.fixture
def account(aws):
    """An account with the image pushed, a dataset in S3 and the output buckets."""
    aws.put_objects(DATA_BUCKET, ["birdclef/train_metadata.csv", "val/train_metadata.csv", "weights/model.safetensors"])
    aws.put_objects(DATA_BUCKET, ["noise/wind.ogg"])
    aws.put_objects(OUTPUT_BUCKET, [])
    aws.put_objects(DEFAULT_BUCKET, [])
    aws.image = aws.push_image("birdsed", submit.job_options.project_version())
    return aws


@pytest.fixture
def run(aws, capsys):
    """Run the command in-process on a fresh boto3 session; returns (exit code, stdout, stderr)."""

    def run(argv, session=None):
        try:
            code = submit.main(argv, session=session or aws.session())
        except SystemExit as exit:  # argparse's own exits: usage errors, --help
            code = exit.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def capture_create_requests(session) -> list[dict]:
    """Record CreateTrainingJob parameters as botocore hands them to the wire (moto rewrites some)."""
    requests: list[dict] = []
    session.events.register(
        "before-parameter-build.sagemaker.CreateTrainingJob", lambda params, **_: requests.append(dict(params))
    )
    return requests


FULL = [
    "--train", f"s3://{DATA_BUCKET}/birdclef/",
    "--validation", f"s3://{DATA_BUCKET}/val/",
    "--pretrained", f"s3://{DATA_BUCKET}/weights/model.safetensors",
    "--noise", f"s3://{DATA_BUCKET}/noise/",
    "--input-mode", "FastFile",
    "--instance", "ml.g5.2xlarge",
    "--instance-count", "2",
    "--nproc-per-node", "4",
    "--role", ROLE,
    "--hp", "epochs=3",
    "--hp", "backbone=efficientnet_b0",
    "--max-run", "2h",
    "--volume-size", "80",
    "--output-path", f"s3://{OUTPUT_BUCKET}/runs",
    "--job-name", "wrens",
    "--tags", "project=birds,owner=ana",
    "--network-isolation",
    "--tensorboard-s3-uri", f"s3://{OUTPUT_BUCKET}/tensorboard/",
]  # fmt: skip


def test_submitted_job_has_every_setting(account, run):
    session = account.session()
    sent = capture_create_requests(session)
    code, out, err = run([*FULL, "--image-uri", account.image], session)
    assert code == 0, err
    name, arn = out.split()
    assert re.fullmatch(r"wrens-\d{14}", name)
    assert arn == f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:training-job/{name}"

    job = account.describe(name)
    assert job["AlgorithmSpecification"]["TrainingImage"] == account.image
    assert "ContainerEntrypoint" not in job["AlgorithmSpecification"]  # the image's own entrypoint runs
    assert job["ResourceConfig"] == {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 2, "VolumeSizeInGB": 80}
    channels = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    assert set(channels) == {"train", "validation", "pretrained", "noise"}  # no SDK code / driver channels
    assert channels["train"]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{DATA_BUCKET}/birdclef/"
    assert channels["pretrained"]["DataSource"]["S3DataSource"]["S3Uri"].endswith("weights/model.safetensors")
    assert {c["InputMode"] for c in channels.values()} == {"FastFile"}
    assert job["EnableManagedSpotTraining"] is True
    stopping = job["StoppingCondition"]
    assert stopping["MaxRuntimeInSeconds"] == 7200
    assert stopping["MaxWaitTimeInSeconds"] >= stopping["MaxRuntimeInSeconds"]
    assert job["CheckpointConfig"] == {
        "S3Uri": f"s3://{OUTPUT_BUCKET}/runs/wrens/checkpoints/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{OUTPUT_BUCKET}/runs"
    assert job["HyperParameters"] == {"epochs": "3", "backbone": "efficientnet_b0", "nproc_per_node": "4"}
    assert job["EnableNetworkIsolation"] is True
    assert job["TensorBoardOutputConfig"] == {
        "S3OutputPath": f"s3://{OUTPUT_BUCKET}/tensorboard/",
        "LocalPath": "/opt/ml/output/data/tensorboard",
    }
    tags = account.client("sagemaker").list_tags(ResourceArn=arn)["Tags"]
    assert {t["Key"]: t["Value"] for t in tags} == {"project": "birds", "owner": "ana"}
    # moto replaces MetricDefinitions with its own in DescribeTrainingJob: check what was sent.
    (request,) = sent
    sent_metrics = {m["Name"]: m["Regex"] for m in request["AlgorithmSpecification"]["MetricDefinitions"]}
    assert sent_metrics == job_spec.METRIC_REGEXES


def test_defaults_image_from_the_account_spot_and_default_bucket(account, run):
    code, out, err = run(["--train", f"s3://{DATA_BUCKET}/birdclef/", "--role", ROLE])
    assert code == 0, err
    job = account.describe(out.split()[0])
    assert job["AlgorithmSpecification"]["TrainingImage"] == account.image  # <account>.dkr.ecr.<region>/birdsed:<v>
    assert job["AlgorithmSpecification"]["TrainingInputMode"] == "File"
    assert job["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 172800}
    assert job["OutputDataConfig"]["S3OutputPath"] == f"s3://{DEFAULT_BUCKET}"
    assert job["CheckpointConfig"]["S3Uri"] == f"s3://{DEFAULT_BUCKET}/birdsed/checkpoints/"
    assert job["EnableNetworkIsolation"] is False
    assert "HyperParameters" not in job or job["HyperParameters"] == {}


def test_no_spot_sends_no_max_wait(account, run):
    code, out, err = run(["--train", f"s3://{DATA_BUCKET}/birdclef/", "--role", ROLE, "--no-spot"])
    assert code == 0, err
    job = account.describe(out.split()[0])
    assert job["EnableManagedSpotTraining"] is False
    assert "MaxWaitTimeInSeconds" not in job["StoppingCondition"]


def test_same_job_name_resumes_from_the_same_checkpoints(account, run, caplog):
    argv = ["--train", f"s3://{DATA_BUCKET}/birdclef/", "--role", ROLE, "--job-name", "kiskadee"]
    first = run(argv)[1].split()[0]
    checkpoint_uri = account.describe(first)["CheckpointConfig"]["S3Uri"]
    account.put_objects(DEFAULT_BUCKET, ["kiskadee/checkpoints/checkpoint-100.pt"])
    with caplog.at_level(logging.WARNING):
        code, out, err = run(argv)
    assert code == 0, err
    second = out.split()[0]
    assert account.describe(second)["CheckpointConfig"]["S3Uri"] == checkpoint_uri
    assert "already holds checkpoints" in caplog.text


def test_wait_follows_the_job_to_its_end(account, run):
    code, out, err = run([*GOOD, "--wait"])
    assert code == 0, err
    assert account.describe(out.split()[0])["TrainingJobStatus"] == "Completed"  # moto's jobs end at once


def test_config_file_values_are_overridden_by_flags(account, run, tmp_path):
    config = tmp_path / "job.json"
    config.write_text(
        json.dumps(
            {
                "instance": "ml.g5.4xlarge",
                "train": f"s3://{DATA_BUCKET}/birdclef/",
                "role": ROLE,
                "spot": True,
                "max_run": "3h",
                "tags": {"project": "birds"},
                "hyperparameters": {"epochs": 40, "lr": 0.0005, "freeze_backbone": True, "backbone": "efficientnet_b0"},
            }
        ),
    )
    code, out, err = run(["--config", str(config), "--no-spot", "--hp", "epochs=2"])
    assert code == 0, err
    job = account.describe(out.split()[0])
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.4xlarge"
    assert job["EnableManagedSpotTraining"] is False
    assert job["StoppingCondition"]["MaxRuntimeInSeconds"] == 3 * 3600
    # Strings, in the spelling the toolkit JSON-decodes back: 2, 0.0005, true.
    assert job["HyperParameters"] == {
        "epochs": "2",
        "lr": "0.0005",
        "freeze_backbone": "true",
        "backbone": "efficientnet_b0",
    }


def test_config_file_mistakes_are_one_line(account, run, tmp_path):
    typo = tmp_path / "typo.json"
    typo.write_text('{"instance_typ": "ml.g5.xlarge"}')
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    for config, message in ((typo, "unknown option 'instance_typ' (did you mean"), (broken, "not valid YAML")):
        assert_fails(run, account, [*GOOD, "--config", str(config)], 2, message)


def test_yaml_config_and_role_from_the_environment(account, run, tmp_path, monkeypatch):
    config = tmp_path / "job.yaml"
    config.write_text(f"train: s3://{DATA_BUCKET}/birdclef/\ninstance-count: 2\n")
    monkeypatch.setenv("BIRDSED_ROLE", ROLE)
    code, out, err = run(["--config", str(config)])
    assert code == 0, err
    job = account.describe(out.split()[0])
    assert job["RoleArn"] == ROLE
    assert job["ResourceConfig"]["InstanceCount"] == 2


# --- the dry run ---------------------------------------------------------------------------------------


def create_training_job_shape():
    return (
        botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob").input_shape
    )


def test_dry_run_prints_a_valid_request_without_credentials_and_creates_nothing(account, run, monkeypatch):
    account.drop_credentials()
    code, out, err = run([*FULL, "--image-uri", account.image, "--dry-run"])
    assert code == 0, err
    request = json.loads(out)
    report = ParamValidator().validate(request, create_training_job_shape())
    assert not report.has_errors(), report.generate_report()
    assert request["AlgorithmSpecification"]["TrainingImage"] == account.image
    assert request["EnableManagedSpotTraining"] is True
    account.restore_credentials()
    assert account.training_jobs() == []


def test_dry_run_request_is_what_a_real_submission_sends(account, run):
    code, out, err = run([*FULL, "--image-uri", account.image, "--dry-run"])
    assert code == 0, err
    dry = json.loads(out)
    session = account.session()
    sent = capture_create_requests(session)
    assert run([*FULL, "--image-uri", account.image], session)[0] == 0
    (real,) = sent
    dry.pop("TrainingJobName")
    real.pop("TrainingJobName")
    assert dry == real


# --- metrics -------------------------------------------------------------------------------------------


def test_metric_regexes_read_the_training_log_line():
    record = {"epoch": 7, "train_loss": 0.4321, "val_loss": 0.5678, "val_cmap": 0.8125, "val_auc": 0.9375, "lr": 2.5e-4}
    # The full line: with a soundscape_validation channel and pseudo-label rounds.
    record |= {"val_soundscape_auc": 0.875, "val_soundscape_cmap": 0.625, "round": 2}
    line = format_metrics(record)
    for text in (line, f"[1,mpirank:0,algo-1]<stdout>:{line}", f"2026-11-24 05:00:00 INFO {line}"):
        for name, regex in job_spec.METRIC_REGEXES.items():
            match = re.search(regex, text)
            assert match, (name, text)
            assert float(match.group(1)) == pytest.approx(record[name], rel=1e-5), name
    # No other line feeds a metric, and a nan (no validation data) is skipped, not recorded as garbage.
    assert not any(
        re.search(regex, "Resumed at epoch=2 step=40 lr=0.001") for regex in job_spec.METRIC_REGEXES.values()
    )
    no_validation = format_metrics({**record, "val_cmap": float("nan"), "val_auc": float("nan")})
    assert re.search(job_spec.METRIC_REGEXES["val_cmap"], no_validation) is None
    assert re.search(job_spec.METRIC_REGEXES["train_loss"], no_validation).group(1) == "0.432100"


# --- errors: one line on stderr, non-zero exit, nothing created ----------------------------------------

GOOD = ["--train", f"s3://{DATA_BUCKET}/birdclef/", "--role", ROLE]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            [*GOOD, "--instance", "ml.g5.xlarg"],
            2,
            "not a SageMaker training instance type; did you mean 'ml.g5.xlarge'",
        ),
        ([*GOOD, "--instance", "p3.2xlarge"], 2, "not a SageMaker training instance type"),
        (["--train", "/home/me/birds", "--role", ROLE], 2, "--train '/home/me/birds' is not an S3 URI"),
        (["--train", "s3://Bad_Bucket/x", "--role", ROLE], 2, "is not an S3 URI"),
        ([*GOOD, "--output-path", "s3:/birds-out"], 2, "--output-path 's3:/birds-out' is not an S3 URI"),
        (["--train", f"s3://{DATA_BUCKET}/birdclef/", "--role", "SageMakerRole"], 2, "is not an IAM role ARN"),
        (
            ["--train", f"s3://{DATA_BUCKET}/birdclef/", "--role", "arn:aws:iam::1234:role/x"],
            2,
            "is not an IAM role ARN",
        ),
        (["--train", f"s3://{DATA_BUCKET}/birdclef/"], 2, "no execution role"),
        (["--role", ROLE], 2, "--train is required"),
        ([*GOOD, "--hp", "epoch=3"], 2, "Unknown hyperparameter 'epoch'. Did you mean 'epochs'?"),
        ([*GOOD, "--hp", "lr=fast"], 2, "Hyperparameter 'lr' must be a number; got 'fast'."),
        ([*GOOD, "--hp", "epochs"], 2, "--hp expects key=value"),
        ([*GOOD, "--max-run", "2h", "--max-wait", "1h"], 2, "--max-wait (3600 s) must be at least --max-run (7200 s)"),
        ([*GOOD, "--max-run", "soon"], 2, "--max-run must be a duration"),
        ([*GOOD, "--instance-count", "0"], 2, "--instance-count must be a positive integer"),
        ([*GOOD, "--job-name", "my_job"], 2, "--job-name 'my_job' must be"),
        ([*GOOD, "--input-mode", "Pipe"], 2, "--input-mode must be one of File, FastFile"),
        ([*GOOD, "--tags", "a,b"], 2, "--tags expects key=value"),
        ([*GOOD, "--bogus"], 2, "unrecognized arguments: --bogus"),
        ([*GOOD, "--config", "/no/such/file.json"], 2, "--config /no/such/file.json: No such file or directory"),
        ([*GOOD, "--local", "--dry-run"], 2, "--dry-run shows a SageMaker CreateTrainingJob request"),
        ([*GOOD, "--image-uri", f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/birdsed:9.9.9"], 1, "not found"),
        (
            [*GOOD, "--image-uri", f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/nope:1"],
            1,
            "repository 'nope' does not exist",
        ),
        ([*GOOD, "--output-path", "s3://no-such-bucket/out"], 1, "bucket 'no-such-bucket' does not exist"),
        (["--train", f"s3://{DATA_BUCKET}/empty/", "--role", ROLE], 1, "no objects under this prefix"),
    ],
)
def test_errors_are_one_line_and_create_nothing(account, run, argv, code, message):
    assert_fails(run, account, argv, code, message)


def assert_fails(run, account, argv, code, message):
    result, out, err = run(argv)
    assert result == code, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err, err
    assert account.training_jobs() == []


def test_no_region_is_an_error(account, run, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert_fails(run, account, GOOD, 1, "no AWS region")


def test_no_credentials_is_an_error(account, run, monkeypatch):
    account.drop_credentials()
    code, out, err = run(GOOD)
    assert (code, out) == (1, "")
    assert err.startswith("error: no AWS credentials found") and err.count("\n") == 1, err
    account.restore_credentials()
    assert account.training_jobs() == []


def test_dry_run_without_credentials_needs_the_image_uri(account, run, monkeypatch):
    account.drop_credentials()
    code, out, err = run([*GOOD, "--dry-run"])
    assert (code, out) == (1, "")
    assert "pass --image-uri for a dry run without credentials" in err and err.count("\n") == 1


# --- soundscape channels and metrics (docs/soundscapes.md) --------------------------------------------


def test_soundscape_channels_reach_the_job(account, run):
    account.put_objects(DATA_BUCKET, ["labelled/soundscape_labels.csv", "labelled/a.ogg", "unlabelled/site/b.ogg"])
    empty = [*GOOD, "--soundscapes", f"s3://{DATA_BUCKET}/none/"]
    assert_fails(run, account, empty, 1, f"--soundscapes s3://{DATA_BUCKET}/none/: no objects under this prefix")
    argv = [*GOOD, "--soundscape-validation", f"s3://{DATA_BUCKET}/labelled/", "--hp", "pseudo_rounds=2"]
    code, out, err = run([*argv, "--soundscapes", f"s3://{DATA_BUCKET}/unlabelled/"])
    assert code == 0, err
    job = account.describe(out.split()[0])
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {
        "train": f"s3://{DATA_BUCKET}/birdclef/",
        "soundscape_validation": f"s3://{DATA_BUCKET}/labelled/",
        "soundscapes": f"s3://{DATA_BUCKET}/unlabelled/",
    }
    assert job["HyperParameters"] == {"pseudo_rounds": "2"}


def test_metric_regexes_read_the_soundscape_scores_and_the_round():
    record = {
        "epoch": 31, "train_loss": 0.25, "val_loss": 0.5, "val_cmap": 0.75, "val_auc": 0.875, "lr": 2.5e-4,
        "val_soundscape_auc": 0.8125, "val_soundscape_cmap": 0.625, "round": 2,
    }  # fmt: skip
    line = format_metrics(record)
    assert line.endswith(" lr=2.500000e-04 val_soundscape_auc=0.812500 val_soundscape_cmap=0.625000 round=2")
    for name, regex in job_spec.METRIC_REGEXES.items():
        assert float(re.search(regex, f"2026-11-24 INFO {line}").group(1)) == pytest.approx(record[name]), name
    plain = format_metrics({key: record[key] for key in job_spec.LINE_FIELDS})
    assert not any(re.search(job_spec.METRIC_REGEXES[name], plain) for name in (*job_spec.SOUNDSCAPE_FIELDS, "round"))
    rounds_only = format_metrics({**{key: record[key] for key in job_spec.LINE_FIELDS}, "round": 1})
    assert re.search(job_spec.METRIC_REGEXES["round"], rounds_only).group(1) == "1"
    assert re.search(job_spec.METRIC_REGEXES["val_cmap"], rounds_only).group(1) == "0.750000"
    assert not re.search(job_spec.METRIC_REGEXES["round"], "round=1 pseudo_windows=9 kept=3 mean_confidence=0.5")
