import json

import pytest

from birdsed import sm_env
from birdsed.errors import ConfigError


def test_defaults_to_opt_ml_layout_under_the_base_dir(tmp_path):
    (tmp_path / "input" / "data" / "train").mkdir(parents=True)
    (tmp_path / "input" / "data" / "pretrained").mkdir(parents=True)
    env = sm_env.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path)})
    assert env.channels == {"pretrained": tmp_path / "input/data/pretrained", "train": tmp_path / "input/data/train"}
    assert env.model_dir == tmp_path / "model"
    assert env.output_data_dir == tmp_path / "output" / "data"
    assert env.checkpoint_dir == tmp_path / "checkpoints"
    assert env.channel("validation") is None


def test_toolkit_variables_take_precedence(tmp_path):
    environ = {
        "SAGEMAKER_BASE_DIR": str(tmp_path),
        "SM_CHANNEL_TRAIN": "/data/train",
        "SM_MODEL_DIR": "/somewhere/model",
        "SM_OUTPUT_DATA_DIR": "/somewhere/output/data",
        "SM_HPS": json.dumps({"epochs": 3, "backbone": "efficientnet_b0", "sagemaker_program": "train.py"}),
        "SM_HOSTS": json.dumps(["algo-1", "algo-2"]),
        "SM_CURRENT_HOST": "algo-2",
        "SM_NUM_GPUS": "4",
    }
    env = sm_env.from_environ(environ)
    assert env.channel("train") == sm_env.Path("/data/train")
    assert str(env.model_dir) == "/somewhere/model"
    assert str(env.output_data_dir) == "/somewhere/output/data"
    assert env.hyperparameters == {"epochs": 3, "backbone": "efficientnet_b0"}
    assert env.hosts == ("algo-1", "algo-2") and env.current_host == "algo-2" and env.num_gpus == 4


def test_command_line_pairs_override_sm_hps():
    env = sm_env.from_environ({"SM_HPS": '{"epochs": 3}'}, ["--epochs", "5", "--n-mels=64", "--lr", "1e-3"])
    assert env.hyperparameters == {"epochs": "5", "n_mels": "64", "lr": "1e-3"}


@pytest.mark.parametrize("argv", [["epochs", "3"], ["--epochs"], ["--"]])
def test_malformed_command_lines_are_config_errors(argv):
    with pytest.raises(ConfigError):
        sm_env.parse_cli_hyperparameters(argv)


def test_failure_file_keeps_the_first_reason(tmp_path):
    sm_env.write_failure(tmp_path / "output", "first reason")
    sm_env.write_failure(tmp_path / "output", "second reason")
    assert (tmp_path / "output" / "failure").read_text() == "first reason\n"
