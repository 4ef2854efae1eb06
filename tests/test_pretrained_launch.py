"""`launch/submit.py --pretrained hub` against a moto S3 and a stand-in Hugging Face Hub (no internet, no AWS)."""

from __future__ import annotations

import logging

import pytest

from birdsed.sm_env import HubSettings
from birdsed_launch import hub_weights, job_options, submit
from hub_server import COMMIT, serve_weights, timm_weights

pytest_plugins = ["moto_aws"]

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account id
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
DATA_BUCKET = "birds-data"
DEFAULT_BUCKET = f"sagemaker-{REGION}-{ACCOUNT}"
REPO = "timm/test_efficientnet.r160_in1k"  # timm's Hub repository of test_efficientnet's weights
KEY = f"birdsed/weights/{REPO}/{COMMIT}/model.safetensors"
OUTPUT = "s3://birds-out/runs"  # not the default bucket: the launcher makes that one for the weights
JOB = ["--train", f"s3://{DATA_BUCKET}/birdclef/", "--role", ROLE, "--output-path", OUTPUT]
JOB += ["--hp", "backbone=test_efficientnet"]


@pytest.fixture(scope="module")
def served():
    with serve_weights(REPO, timm_weights("test_efficientnet")) as hub:
        yield hub


@pytest.fixture
def account(aws, served, monkeypatch, tmp_path):
    """An account with the image and a dataset, but no default bucket yet; the launcher sees the stand-in Hub."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # this test's downloads only
    aws.put_objects(DATA_BUCKET, ["birdclef/train_metadata.csv"])
    aws.put_objects("birds-out", [])
    aws.image = aws.push_image("birdsed", job_options.project_version())
    monkeypatch.setenv("HF_ENDPOINT", served.url)
    served.requests.clear()
    return aws


@pytest.fixture
def run(aws, capsys, caplog):
    caplog.set_level(logging.INFO)

    def run(argv, session=None):
        caplog.clear()
        code = submit.main(argv, session=session or aws.session())
        captured = capsys.readouterr()
        return code, captured.out, captured.err + caplog.text

    return run


def uploads(session) -> list[str]:
    """Every S3 write the launcher makes through `session`."""
    calls: list[str] = []
    for operation in ("PutObject", "CreateMultipartUpload"):
        session.events.register(f"before-call.s3.{operation}", lambda model, **_: calls.append(model.name))
    return calls


def pretrained_channel(account, job_name: str) -> str:
    channels = {c["ChannelName"]: c for c in account.describe(job_name)["InputDataConfig"]}
    return channels["pretrained"]["DataSource"]["S3DataSource"]["S3Uri"]


def test_hub_weights_are_uploaded_once_and_passed_as_the_pretrained_channel(account, run, served):
    session = account.session()
    written = uploads(session)
    code, out, err = run([*JOB, "--pretrained", "hub", "--network-isolation", "--job-name", "first"], session)
    assert code == 0, err
    assert pretrained_channel(account, out.split()[0]) == f"s3://{DEFAULT_BUCKET}/{KEY}"
    stored = account.client("s3").get_object(Bucket=DEFAULT_BUCKET, Key=KEY)["Body"].read()
    assert stored == served.files[(REPO, "model.safetensors")]  # the bucket was made, the served bytes uploaded
    assert written == ["PutObject"] and len(served.downloads()) == 1
    assert "--network-isolation without --pretrained" not in err

    # Another job: the Hub is asked which commit, the file in S3 has its size: nothing downloaded or uploaded.
    session, served.requests[:] = account.session(), []
    written = uploads(session)
    code, out, err = run([*JOB, "--pretrained", "hub", "--job-name", "second"], session)
    assert code == 0, err
    assert pretrained_channel(account, out.split()[0]) == f"s3://{DEFAULT_BUCKET}/{KEY}"
    assert written == [] and served.downloads() == []
    assert "already in" in err and "not uploaded again" in err

    # A file of another size there (an interrupted copy by hand): replaced.
    account.client("s3").put_object(Bucket=DEFAULT_BUCKET, Key=KEY, Body=b"truncated")
    session = account.session()
    written = uploads(session)
    assert run([*JOB, "--pretrained", "hub", "--job-name", "third"], session)[0] == 0
    assert written == ["PutObject"]
    assert account.client("s3").head_object(Bucket=DEFAULT_BUCKET, Key=KEY)["ContentLength"] > len(b"truncated")


def test_a_dry_run_names_the_weights_and_uploads_nothing(account, run, served):
    session = account.session()
    written = uploads(session)
    code, out, err = run([*JOB, "--pretrained", "hub", "--dry-run", "--image-uri", account.image], session)
    assert code == 0, err
    assert f"s3://{DEFAULT_BUCKET}/{KEY}" in out and "would be staged" in err
    assert written == [] and served.downloads() == [] and account.training_jobs() == []


def test_network_isolation_without_weights_is_explained(account, run):
    code, _, err = run([*JOB, "--network-isolation", "--dry-run", "--image-uri", account.image])
    assert code == 0, err
    assert "--network-isolation without --pretrained" in err and "RANDOM weights" in err
    assert "--pretrained hub" in err

    code, _, err = run([*JOB, "--network-isolation", "--hp", "pretrained=true"])
    assert code != 0 and "pretrained=true needs weights for test_efficientnet" in err
    assert "Traceback" not in err and account.training_jobs() == []

    # pretrained=false asks for no weights: no warning; --pretrained hub with it is a contradiction.
    code, _, err = run([*JOB, "--network-isolation", "--hp", "pretrained=false", "--dry-run"])
    assert code == 0 and "--network-isolation without" not in err
    code, _, err = run([*JOB, "--pretrained", "hub", "--hp", "pretrained=false"])
    assert code != 0 and "pretrained=false would never use" in err


def test_an_unreachable_hub_is_one_line_and_creates_nothing(account, run, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    monkeypatch.setattr("birdsed.hub.RETRY_PAUSE_S", 0.0)
    code, _, err = run([*JOB, "--pretrained", "hub"])
    assert code != 0
    assert "--pretrained hub: the Hugging Face Hub (http://127.0.0.1:9) did not answer" in err
    assert account.training_jobs() == [] and "Traceback" not in err
    buckets = [bucket["Name"] for bucket in account.client("s3").list_buckets()["Buckets"]]
    assert DEFAULT_BUCKET not in buckets


def test_a_backbone_without_hub_weights_is_one_line(account, run):
    code, _, err = run([*JOB, "--pretrained", "hub", "--hp", "backbone=resnet18", "--hp", "pretrained=auto"])
    assert code != 0 and "resnet18" in err and "Traceback" not in err


def test_local_mode_fetches_the_file_into_a_local_channel_folder(tmp_path, served):
    options = job_options.JobOptions(pretrained="hub", hyperparameters={"backbone": "test_efficientnet"})
    staged = hub_weights.stage_locally(
        options, HubSettings(endpoint=served.url, cache_dir=tmp_path / "hf"), {"XDG_CACHE_HOME": str(tmp_path)}
    )
    folder = tmp_path / "birdsed" / "weights" / REPO / COMMIT
    assert staged.pretrained == str(folder)
    assert (folder / "model.safetensors").read_bytes() == served.files[(REPO, "model.safetensors")]
