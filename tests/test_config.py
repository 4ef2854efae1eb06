import pytest

from birdsed.config import Config, from_hyperparameters
from birdsed.errors import ConfigError


def test_defaults_match_the_documented_interface():
    cfg = from_hyperparameters({})
    assert cfg == Config()
    assert cfg.model.backbone == "tf_efficientnetv2_s.in21k"
    assert cfg.model.pretrained == "auto"
    assert cfg.data.sample_rate == 32000
    assert cfg.data.duration == 5.0
    assert cfg.loss.loss == "focal"
    assert cfg.optim.max_steps == 0


def test_string_values_are_parsed_by_field_type():
    cfg = from_hyperparameters(
        {
            "epochs": "3",
            "lr": "1e-4",
            "freeze_backbone": "True",
            "amp": "OFF",
            "head": "chrononet",
            "duration": "2.5",
            "batch_size": 8.0,
            "pretrained": True,
        }
    )
    assert cfg.optim.epochs == 3 and isinstance(cfg.optim.epochs, int)
    assert cfg.optim.lr == pytest.approx(1e-4)
    assert cfg.model.freeze_backbone is True
    assert cfg.run.amp == "off"
    assert cfg.model.head == "chrononet"
    assert cfg.data.duration == 2.5
    assert cfg.optim.batch_size == 8
    assert cfg.model.pretrained == "true"


def test_every_public_name_is_flat_and_round_trips():
    cfg = from_hyperparameters({"n_mels": "64", "seed": "3"})
    assert from_hyperparameters(cfg.hyperparameters()) == cfg


@pytest.mark.parametrize(
    ("hyperparameters", "named"),
    [
        ({"epoch": "3"}, "Unknown hyperparameter 'epoch'. Did you mean 'epochs'?"),
        ({"epochs": "three"}, "'epochs' must be an integer; got 'three'"),
        ({"epochs": "2.5"}, "'epochs' must be an integer"),
        ({"epochs": "0"}, "'epochs' must be at least 1"),
        ({"lr": "fast"}, "'lr' must be a number"),
        ({"lr": "0"}, "'lr' must be greater than 0"),
        ({"lr": "nan"}, "'lr' must be a finite number"),
        ({"loss": "mse"}, "'loss' must be one of focal, bce; got 'mse'"),
        ({"head": "gru"}, "'head' must be one of attention, chrononet"),
        ({"amp": "fp16"}, "'amp' must be one of auto, off"),
        ({"pretrained": "maybe"}, "'pretrained' must be one of auto, true, false"),
        ({"freeze_backbone": "perhaps"}, "'freeze_backbone' must be true or false"),
        ({"val_fraction": "1.5"}, "'val_fraction' must be at most 0.9"),
        ({"backbone": "  "}, "'backbone' must not be empty"),
        ({"sample_rate": "16000"}, "'fmax' (14000 Hz) is above the Nyquist frequency"),
        ({"fmin": "9000", "fmax": "8000", "sample_rate": "16000"}, "'fmin' (9000) must be below fmax"),
        ({"duration": "0.01"}, "'duration' (0.01 s) is shorter than one FFT window"),
    ],
)
def test_bad_hyperparameters_fail_with_a_message_naming_them(hyperparameters, named):
    with pytest.raises(ConfigError) as raised:
        from_hyperparameters(hyperparameters)
    assert named in str(raised.value)
