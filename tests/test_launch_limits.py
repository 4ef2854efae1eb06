"""The launcher refuses, before it talks to AWS, values SageMaker would refuse, and unknown backbones."""

from __future__ import annotations

import logging
import sys

import pytest

from birdsed_launch import checks, submit

GOOD = ["--train", "s3://birds-data/birdclef/", "--role", "arn:aws:iam::123456789012:role/SageMakerRole"]


@pytest.fixture
def run(capsys, monkeypatch):
    """submit.main in-process, without AWS: every case here must fail before a session is made."""
    monkeypatch.setattr(submit.boto3, "Session", lambda **_: pytest.fail("reached AWS"))

    def run(argv):
        code = submit.main(argv)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hp", "backbone=" + "x" * 3000], "hyperparameter 'backbone' has a value of 3,000 characters; SageMaker "
         "accepts at most 2,500 per value"),
        (["--max-run", "1000d"], "--max-run is 1000 days; SageMaker training jobs run at most 28 days"),
        (["--max-run", "29d", "--no-spot"], "--max-run is 29 days"),
        (["--instance-count", "100000"], "--instance-count 100,000 is more than 100 instances"),
        (["--hp", "backbone=efficientnet_b42"], "hyperparameter backbone 'efficientnet_b42' is not a timm model; "
         "did you mean 'efficientnet_b4'?"),
        (["--hp", "backbone=tf_efficientnetv2_s.in21k", "--local", "--hp", "backbone=convnext_tinyy"],
         "'convnext_tinyy' is not a timm model; did you mean 'convnext_tiny'?"),
    ],
)  # fmt: skip
def test_values_sagemaker_refuses_are_one_line_errors_before_any_aws_call(run, argv, message):
    code, out, err = run([*GOOD, *argv])
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err


def test_the_limits_at_their_edge_pass(run):
    checks.check_hyperparameter_sizes({"backbone": "x" * 2500, **{f"k{i}": "1" for i in range(99)}})
    checks.check_run_limits(28 * 86400, 100)
    with pytest.raises(checks.UsageError, match="101 hyperparameters given; SageMaker accepts at most 100"):
        checks.check_hyperparameter_sizes({f"k{i}": "1" for i in range(101)})


def test_without_timm_the_backbone_is_left_to_the_job_with_a_note(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    caplog.set_level(logging.INFO)
    checks.check_backbone("efficientnet_b42")
    assert (
        "timm is not installed here, so the backbone 'efficientnet_b42' is checked when the job starts" in caplog.text
    )
