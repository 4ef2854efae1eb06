"""A real moto server on 127.0.0.1 for the launcher's tests (S3, STS, ECR, SageMaker); no AWS account.

Used as a pytest plugin (`pytest_plugins = ["moto_aws"]`, not imported: pytest rewrites its asserts):
`moto_server` runs once per session, `aws` points boto3 and the SageMaker SDK at it with fake
credentials and wipes its state per test.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass, field

import boto3
import botocore.loaders
import botocore.session
import pytest
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's account: STS GetCallerIdentity answers it
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerRole"
# Hermetic runs: no AWS config files of the machine, no instance metadata lookups, no SDK telemetry.
# One botocore data loader for every test session: parsing the SageMaker service model takes ~0.5 s a time.
LOADER = botocore.loaders.create_loader()
SDK_CONFIG = "SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n"


@pytest.fixture(scope="session")
def moto_server():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@dataclass
class Aws:
    endpoint: str
    monkeypatch: pytest.MonkeyPatch
    account: str = ACCOUNT
    region: str = REGION
    role: str = ROLE

    def drop_credentials(self) -> None:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            self.monkeypatch.delenv(name, raising=False)

    def restore_credentials(self) -> None:
        self.monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        self.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")

    clients: dict = field(default_factory=dict)

    def session(self) -> boto3.Session:
        """A fresh session (region and credentials read from the environment now), quick to make clients."""
        core = botocore.session.get_session()
        core.register_component("data_loader", LOADER)
        return boto3.Session(botocore_session=core)

    def client(self, name: str):
        """A client for the test's own checks (made once per test)."""
        if name not in self.clients:
            self.clients[name] = self.session().client(name, region_name=REGION)
        return self.clients[name]

    def training_jobs(self) -> list[str]:
        return [job["TrainingJobName"] for job in self.client("sagemaker").list_training_jobs()["TrainingJobSummaries"]]

    def describe(self, job_name: str) -> dict:
        return self.client("sagemaker").describe_training_job(TrainingJobName=job_name)

    def put_objects(self, bucket: str, keys: list[str]) -> None:
        s3 = self.client("s3")
        s3.create_bucket(Bucket=bucket)
        for key in keys:
            s3.put_object(Bucket=bucket, Key=key, Body=b"x")

    def push_image(self, repository: str, tag: str) -> str:
        """An ECR image (a manifest is all moto needs); returns its URI."""
        ecr = self.client("ecr")
        try:
            ecr.create_repository(repositoryName=repository)
        except ecr.exceptions.RepositoryAlreadyExistsException:
            pass
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "digest": "sha256:" + "a" * 64,
                "size": 1,
                "mediaType": "application/vnd.docker.container.image.v1+json",
            },
            "layers": [],
        }
        ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)
        return f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/{repository}:{tag}"


@pytest.fixture
def aws(moto_server, monkeypatch, tmp_path) -> Aws:
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")).read()
    sdk_config = tmp_path / "sagemaker-config.yaml"
    sdk_config.write_text(SDK_CONFIG)
    missing = str(tmp_path / "no-such-file")
    for name, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_VALIDATE_ROLE": "false",  # the SDK's IAM check of the role; moto has no policy simulator
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(sdk_config),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE", "BIRDSED_ROLE"):
        monkeypatch.delenv(name, raising=False)
    return Aws(moto_server, monkeypatch)
