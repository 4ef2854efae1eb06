"""`submit.py --local`: SDK v3 local mode, with a stand-in `docker` (tests/fake_docker.py) that runs the toolkit.

The stand-in does what docker compose and our image do with the compose file the SDK writes, so
these tests cover the launcher and the SDK's local mode for real; only the container is emulated.
"""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from sagemaker.train.model_trainer import Mode

from birdsed_launch import job_options, job_spec, local_mode, submit
from conftest import FAST_HYPERPARAMETERS

FAKE_DOCKER = Path(__file__).with_name("fake_docker.py")
IMAGE = f"birdsed:{job_options.project_version()}"
pytestmark = pytest.mark.timeout(300)  # the toolkit waits 15 minutes for unresolvable hosts; fail sooner


def install(bin_dir: Path, name: str, script: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(script)
    path.chmod(0o755)


@pytest.fixture
def docker(tmp_path, monkeypatch) -> Path:
    """A `docker` on PATH (and nothing else of the machine's); returns the folder it logs to."""
    bin_dir = tmp_path / "bin"
    install(
        bin_dir,
        "docker",
        f"#!{sys.executable}\nimport runpy, sys\nrunpy.run_path({str(FAKE_DOCKER)!r}, run_name='__main__')\n",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(tmp_path / "docker-log"))
    monkeypatch.setenv("FAKE_DOCKER_IMAGES", IMAGE)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # local folders need no AWS at all
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return tmp_path / "docker-log"


def run(capsys, argv):
    code = submit.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def hp_flags(**overrides) -> list[str]:
    values = {**FAST_HYPERPARAMETERS, "epochs": 1, **overrides}
    return [item for name, value in values.items() for item in ("--hp", f"{name}={value}")]


@pytest.mark.slow
def test_local_job_trains_and_leaves_model_tar_gz_in_sagemaker_layout(docker, synthetic_dataset, tmp_path, capsys):
    out_dir = tmp_path / "out"
    argv = ["--local", "--image-uri", IMAGE, "--train", str(synthetic_dataset), "--output-path", f"file://{out_dir}"]
    code, out, err = run(capsys, [*argv, *hp_flags()])
    assert code == 0, err[-3000:]
    model = Path(out.strip().splitlines()[-1])  # the last stdout line; container logs come before it
    job_dirs = list(out_dir.iterdir())
    assert len(job_dirs) == 1 and job_dirs[0].name.startswith("birdsed-")  # scratch folder removed
    assert model == job_dirs[0] / "output" / "model.tar.gz"
    with tarfile.open(model) as archive:
        assert {"model.pt", "labels.json", "config.json"} <= set(archive.getnames())
    assert (model.parent / "output.tar.gz").exists()
    assert "epoch=1 train_loss=" in out  # the job's own log line went through

    compose = yaml.safe_load((docker / "docker-compose.yaml").read_text())
    (service,) = compose["services"].values()
    assert service["image"] == IMAGE
    assert "entrypoint" not in service and "command" not in service  # the image's own entrypoint, no SDK driver
    assert "deploy" not in service  # no GPU on this machine: instance type "local"
    assert f"{synthetic_dataset}:/opt/ml/input/data/train" in service["volumes"]


@pytest.mark.slow
def test_local_job_failure_is_one_line_with_the_jobs_reason(docker, synthetic_dataset, tmp_path, capsys):
    argv = ["--local", "--image-uri", IMAGE, "--train", str(synthetic_dataset), "--output-path", str(tmp_path / "out")]
    # Valid for the launcher, fatal for the job: a weights file that is not one (the launcher reads no channel).
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "model.safetensors").write_text("<html>404 Not Found</html>")
    code, _out, err = run(capsys, [*argv, "--pretrained", str(weights), *hp_flags(pretrained="auto")])
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: local training failed:") and "is not a safetensors file" in last, err[-2000:]


def test_gpu_machine_runs_local_gpu(docker, synthetic_dataset, tmp_path, capsys, monkeypatch):
    install(tmp_path / "bin", "nvidia-smi", "#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    assert local_mode.gpu_available()
    monkeypatch.setenv("FAKE_DOCKER_NO_RUN", "1")  # only the compose file matters here
    argv = ["--local", "--image-uri", IMAGE, "--train", str(synthetic_dataset), "--output-path", str(tmp_path / "out")]
    code, _out, err = run(capsys, [*argv, *hp_flags()])
    assert code == 0, err[-3000:]
    (service,) = yaml.safe_load((docker / "docker-compose.yaml").read_text())["services"].values()
    assert service["deploy"]["resources"]["reservations"]["devices"] == [{"count": "all", "capabilities": ["gpu"]}]


def test_local_trainer_runs_the_images_entrypoint_on_local_folders(tmp_path, synthetic_dataset):
    options = job_options.JobOptions(train=str(synthetic_dataset), local=True, hyperparameters={"epochs": "1"})
    trainer = job_spec.local_trainer(options, IMAGE, "local_gpu", tmp_path, session=None)
    assert trainer.training_mode == Mode.LOCAL_CONTAINER
    assert trainer.source_code is None and trainer.distributed is None  # no SDK driver scripts
    assert (trainer.compute.instance_type, trainer.compute.instance_count) == ("local_gpu", 1)
    assert trainer.local_container_root == str(tmp_path)
    request = trainer._create_training_job_args()
    assert request["algorithm_specification"].training_image == IMAGE
    assert request["algorithm_specification"].container_entrypoint is None
    assert request["hyper_parameters"] == {"epochs": "1"}
    (channel,) = request["input_data_config"]
    assert channel.channel_name == "train"
    assert channel.data_source.file_system_data_source.directory_path == str(synthetic_dataset)


def test_no_gpu_without_nvidia_smi(docker):
    assert not local_mode.gpu_available()


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        ("no-docker", [], "--local needs Docker: no 'docker' command on PATH"),
        ("docker", ["--image-uri", "birdsed:not-built"], "image birdsed:not-built is not in the local Docker"),
        ("docker", ["--train", "/no/such/dataset"], "--train /no/such/dataset: no such folder"),
        ("docker", ["--output-path", "s3://bucket/out"], "--output-path 's3://bucket/out' must be a local folder"),
        ("docker", ["--hp", "epoch=1"], "Unknown hyperparameter 'epoch'"),
        ("docker", ["--dry-run"], "--dry-run shows a SageMaker CreateTrainingJob request; --local creates none"),
    ],
)
def test_local_errors_are_one_line(request, tmp_path, synthetic_dataset, capsys, monkeypatch, setup, argv, message):
    if setup == "docker":
        request.getfixturevalue("docker")
    else:
        monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    base = ["--local", "--train", str(synthetic_dataset), "--output-path", str(tmp_path / "out")]
    code, out, err = run(capsys, [*base, *argv])
    assert code in (1, 2) and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_soundscape_channels_are_mounted_in_local_mode(docker, synthetic_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_DOCKER_NO_RUN", "1")  # only the compose file matters here
    labelled, unlabelled = tmp_path / "labelled", tmp_path / "unlabelled"
    labelled.mkdir()
    unlabelled.mkdir()
    argv = ["--local", "--image-uri", IMAGE, "--train", str(synthetic_dataset), "--output-path", str(tmp_path / "out")]
    argv += ["--soundscape-validation", str(labelled), "--soundscapes", str(unlabelled)]
    code, _out, err = run(capsys, [*argv, *hp_flags(pseudo_rounds=1)])
    assert code == 0, err[-3000:]
    (service,) = yaml.safe_load((docker / "docker-compose.yaml").read_text())["services"].values()
    assert f"{labelled}:/opt/ml/input/data/soundscape_validation" in service["volumes"]
    assert f"{unlabelled}:/opt/ml/input/data/soundscapes" in service["volumes"]
    code, _out, err = run(capsys, [*argv[:7], "--soundscapes", str(tmp_path / "none")])
    assert code == 2 and f"--soundscapes {tmp_path / 'none'}: no such folder" in err


def test_pretrained_hub_is_fetched_into_a_local_folder_and_mounted(
    docker, synthetic_dataset, tmp_path, capsys, monkeypatch
):
    from hub_server import COMMIT, serve_weights, timm_weights

    monkeypatch.setenv("FAKE_DOCKER_NO_RUN", "1")  # only the compose file matters here
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))  # not a copy left by another test
    repo = "timm/test_efficientnet.r160_in1k"
    argv = ["--local", "--image-uri", IMAGE, "--train", str(synthetic_dataset), "--output-path", str(tmp_path / "out")]
    with serve_weights(repo, timm_weights("test_efficientnet")) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, _out, err = run(capsys, [*argv, "--pretrained", "hub", *hp_flags(pretrained="true")])
        assert code == 0, err[-3000:]
        assert len(hub.downloads()) == 1
    folder = tmp_path / "cache" / "birdsed" / "weights" / repo / COMMIT
    assert (folder / "model.safetensors").is_file()
    (service,) = yaml.safe_load((docker / "docker-compose.yaml").read_text())["services"].values()
    assert f"{folder}:/opt/ml/input/data/pretrained" in service["volumes"]
