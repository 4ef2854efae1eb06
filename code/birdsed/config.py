"""One typed configuration, built from the job's hyperparameters in one place.

Hyperparameter names are flat (`epochs`, `n_mels`, ...): they are the public interface used by the
launcher, the docs and the tests. Each belongs to exactly one section below; its value, which
SageMaker delivers as a string (or JSON-decoded by the toolkit), is parsed by the field's type and
checked against the field's range. Unknown names are rejected by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from birdsed.errors import ConfigError


def _range(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> dict:
    return {"low": low, "high": high, "low_open": low_open}


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "tf_efficientnetv2_s.in21k"
    pretrained: Literal["auto", "true", "false"] = "auto"
    freeze_backbone: bool = False
    head: Literal["attention", "chrononet"] = "attention"
    drop_rate: float = field(default=0.2, metadata=_range(0.0, 0.95))
    drop_path_rate: float = field(default=0.1, metadata=_range(0.0, 0.95))
    gru_hidden: int = field(default=256, metadata=_range(1))
    # prior: the classifier's bias starts at each class's log-odds in the training draws (RetinaNet's focal-loss
    # initialisation), so a fresh model outputs the class prior instead of 0.5 everywhere and the first hundred
    # steps are not spent pushing every output down (docs/recipe.md); zero: PyTorch's default initialisation.
    head_bias: Literal["prior", "zero"] = field(
        default="prior",
        metadata={"help": "Initial classifier bias: prior (each class's log-odds in the training data) or zero."},
    )


@dataclass(frozen=True)
class DataConfig:
    sample_rate: int = field(default=32000, metadata=_range(4000, 192000))
    duration: float = field(default=5.0, metadata=_range(0.0, 120.0, low_open=True))
    secondary_weight: float = field(default=0.5, metadata=_range(0.0, 1.0))
    val_fraction: float = field(default=0.1, metadata=_range(0.0, 0.9))
    num_workers: int = field(default=-1, metadata=_range(-1, 64))
    # quick: header + the first and last second of each file; full: decode every file once at start.
    audio_check: Literal["quick", "full"] = "quick"
    max_skipped_fraction: float = field(default=0.1, metadata=_range(0.0, 1.0))
    # An epoch draws max(training recordings, min_epoch_crops) crops: one crop per recording per epoch
    # gave a 100-recording dataset 3 optimizer steps an epoch (docs/recipe.md). 0: one per recording.
    min_epoch_crops: int = field(default=512, metadata=_range(0, 10_000_000))
    # Where training crops start: random (uniform over the recording); energy (the crop with the most
    # high-frequency energy of `crop_candidates` random ones: a call rather than silence or wind); start
    # (uniform within the first 2 x duration seconds, where xeno-canto recordists usually start on the call).
    crop: Literal["random", "energy", "start"] = "random"
    crop_candidates: int = field(default=4, metadata=_range(2, 64))


@dataclass(frozen=True)
class FeatureConfig:
    n_mels: int = field(default=128, metadata=_range(8, 512))
    n_fft: int = field(default=2048, metadata=_range(64, 16384))
    hop_length: int = field(default=512, metadata=_range(16, 8192))
    fmin: float = field(default=50.0, metadata=_range(0.0))
    fmax: float = field(default=14000.0, metadata=_range(0.0, low_open=True))
    top_db: float = field(default=80.0, metadata=_range(10.0, 200.0))


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = field(default=30, metadata=_range(1, 100000))
    batch_size: int = field(default=32, metadata=_range(1, 4096))
    grad_accum_steps: int = field(default=1, metadata=_range(1, 1024))
    lr: float = field(default=1e-3, metadata=_range(0.0, 10.0, low_open=True))
    weight_decay: float = field(default=1e-2, metadata=_range(0.0, 10.0))
    warmup_epochs: float = field(default=1.0, metadata=_range(0.0, 1000.0))
    min_lr_ratio: float = field(default=0.01, metadata=_range(0.0, 1.0))
    max_grad_norm: float = field(default=5.0, metadata=_range(0.0))
    max_steps: int = field(default=0, metadata=_range(0))
    nonfinite_patience: int = field(default=10, metadata=_range(1, 100000))


@dataclass(frozen=True)
class LossConfig:
    loss: Literal["focal", "bce"] = "focal"
    focal_gamma: float = field(default=2.0, metadata=_range(0.0, 10.0))
    frame_loss_weight: float = field(default=0.5, metadata=_range(0.0, 10.0))


@dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentations on the training device; each has a probability `*_p` per item and a range.

    Defaults follow BirdCLEF practice (see README). `augment=off` switches every one off.
    """

    augment: Literal["on", "off"] = "on"
    gain_p: float = field(default=0.5, metadata=_range(0.0, 1.0))
    gain_db_min: float = field(default=-6.0, metadata=_range(-40.0, 40.0))
    gain_db_max: float = field(default=6.0, metadata=_range(-40.0, 40.0))
    mix_p: float = field(default=0.5, metadata=_range(0.0, 1.0))
    mix_max_clips: int = field(default=3, metadata=_range(2, 3))
    # raw: summed at recorded levels (a quieter clip may be inaudible while its label stays in the union); equal:
    # each added clip at the item's audible level (+-6 dB). equal fitted slower on real_birds and its held-out
    # effect is not measured yet, so raw stays the default (docs/recipe.md).
    mix_levels: Literal["equal", "raw"] = field(
        default="raw",
        metadata={"help": "Levels of mixed clips: equal (each near the item's audible level) or raw (as recorded)."},
    )
    stretch_p: float = field(default=0.2, metadata=_range(0.0, 1.0))
    stretch_min: float = field(default=0.8, metadata=_range(0.25, 4.0))
    stretch_max: float = field(default=1.25, metadata=_range(0.25, 4.0))
    pitch_p: float = field(default=0.2, metadata=_range(0.0, 1.0))
    pitch_semitones_min: float = field(default=-2.0, metadata=_range(-12.0, 12.0))
    pitch_semitones_max: float = field(default=2.0, metadata=_range(-12.0, 12.0))
    background_p: float = field(default=0.5, metadata=_range(0.0, 1.0))
    background_snr_min: float = field(default=3.0, metadata=_range(-20.0, 60.0))
    background_snr_max: float = field(default=20.0, metadata=_range(-20.0, 60.0))
    # band: signal and noise powers after a first-difference high-pass (what the model hears); crop: plain mean
    # square, where a crop's low-frequency wind sets the level and white noise buries its bird (docs/recipe.md).
    noise_snr_reference: Literal["band", "crop"] = field(
        default="band",
        metadata={"help": "How noise SNRs are measured: band (after a high-pass, what the model hears) or crop."},
    )
    noise_p: float = field(default=0.25, metadata=_range(0.0, 1.0))
    noise_snr_min: float = field(default=5.0, metadata=_range(-20.0, 60.0))
    noise_snr_max: float = field(default=20.0, metadata=_range(-20.0, 60.0))
    pink_noise_p: float = field(default=0.25, metadata=_range(0.0, 1.0))
    pink_noise_snr_min: float = field(default=5.0, metadata=_range(-20.0, 60.0))
    pink_noise_snr_max: float = field(default=20.0, metadata=_range(-20.0, 60.0))
    wave_mask_p: float = field(default=0.2, metadata=_range(0.0, 1.0))
    wave_mask_max_fraction: float = field(default=0.1, metadata=_range(0.0, 0.9))
    time_mask_p: float = field(default=0.3, metadata=_range(0.0, 1.0))
    time_mask_max_fraction: float = field(default=0.1, metadata=_range(0.0, 0.9))
    freq_mask_p: float = field(default=0.3, metadata=_range(0.0, 1.0))
    freq_mask_max_bins: int = field(default=16, metadata=_range(0, 512))


# (low, high) hyperparameter pairs that must be ordered.
AUGMENT_RANGES = (
    ("gain_db_min", "gain_db_max"),
    ("stretch_min", "stretch_max"),
    ("pitch_semitones_min", "pitch_semitones_max"),
    ("background_snr_min", "background_snr_max"),
    ("noise_snr_min", "noise_snr_max"),
    ("pink_noise_snr_min", "pink_noise_snr_max"),
)


@dataclass(frozen=True)
class ValidationConfig:
    """How validation is judged (docs/recipe.md)."""

    # The log-mel statistics + logistic regression reference, fitted at start and scored on validation.
    baseline: Literal["on", "off"] = "on"
    # Which validation metric picks the best epoch. auto: val_cmap, unless the validation set is so small
    # that padding flatters cmAP (random scores above birdsed.training.selection.PADDED_CHANCE_LIMIT): val_auc.
    # val_soundscape_auc / val_soundscape_cmap score the labelled `soundscape_validation` windows (docs/soundscapes.md).
    select_metric: Literal["auto", "val_cmap", "val_auc", "val_soundscape_auc", "val_soundscape_cmap"] = "auto"


@dataclass(frozen=True)
class RunConfig:
    amp: Literal["auto", "off"] = "auto"
    seed: int = field(default=42, metadata=_range(0, 2**31 - 1))
    checkpoint_keep: int = field(default=3, metadata=_range(1, 1000))
    nproc_per_node: int = field(default=0, metadata=_range(0, 64))  # 0: one per GPU, 1 without GPUs
    sync_batchnorm: bool = False
    # auto: torchrun and DistributedDataParallel only for more than one process; always: also for one, so a
    # single GPU rehearses a multi-GPU job's code path (torchrun, NCCL, DDP, collectives), as the GPU check does.
    distributed: Literal["auto", "always"] = "auto"
    # torch.compile of backbone + head: faster steps on a GPU after a minute or two of compiling.
    compile: bool = False
    # model.onnx beside model.pt2 at the end of training (onnxruntime, CPU inference, Kaggle); takes
    # 15-60 s on the job's CPU; a failed export is logged and recorded, never fails the job.
    export_onnx: bool = True


@dataclass(frozen=True)
class SoundscapeConfig:
    """Pseudo-label rounds on the unlabelled `soundscapes` channel (docs/soundscapes.md).

    Round 0 trains on the focal data; each round r >= 1 starts from round r-1's best weights, predicts
    every soundscape window, keeps those whose top probability is >= `pseudo_threshold` with soft
    targets `p ** pseudo_power` (below `pseudo_min`: 0) and swaps them into training batches, each item
    with probability `pseudo_p`, for `pseudo_epochs` epochs (0: as many as `epochs`).
    """

    pseudo_rounds: int = field(default=0, metadata=_range(0, 100))
    pseudo_threshold: float = field(default=0.5, metadata=_range(0.0, 1.0))
    pseudo_power: float = field(default=1.0, metadata=_range(0.0, 10.0, low_open=True))
    pseudo_min: float = field(default=0.1, metadata=_range(0.0, 1.0))
    pseudo_p: float = field(default=0.4, metadata=_range(0.0, 1.0))
    pseudo_epochs: int = field(default=0, metadata=_range(0, 100000))


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    run: RunConfig = field(default_factory=RunConfig)
    soundscapes: SoundscapeConfig = field(default_factory=SoundscapeConfig)

    def to_dict(self) -> dict[str, dict[str, object]]:
        return dataclasses.asdict(self)

    def hyperparameters(self) -> dict[str, object]:
        """Every hyperparameter by its public (flat) name."""
        return {name: value for section in self.to_dict().values() for name, value in section.items()}


def _section_fields() -> dict[str, tuple[str, dataclasses.Field, object]]:
    """Map each public hyperparameter name to (section name, field, resolved type)."""
    names: dict[str, tuple[str, dataclasses.Field, object]] = {}
    for section in dataclasses.fields(Config):
        section_type = typing.get_type_hints(Config)[section.name]
        hints = typing.get_type_hints(section_type)
        for item in dataclasses.fields(section_type):
            names[item.name] = (section.name, item, hints[item.name])
    return names


HYPERPARAMETERS = _section_fields()

# A job small enough to train in seconds on a CPU, with real structure (a tiny timm EfficientNet at
# 16 kHz): the tests, the smoke checks and the memory profile use it.
TINY_HYPERPARAMETERS = {
    "backbone": "test_efficientnet",
    "sample_rate": 16000,
    "fmax": 8000,
    "n_mels": 48,
    "n_fft": 1024,
    "hop_length": 256,
    "duration": 3,
    "batch_size": 16,
    "lr": 3e-3,
    # One crop per recording per epoch, as before min_epoch_crops: tests count epochs and steps on tiny data.
    "min_epoch_crops": 0,
}


def from_hyperparameters(hyperparameters: Mapping[str, object]) -> Config:
    """Build and validate the config; raise `ConfigError` naming the first bad hyperparameter."""
    unknown = sorted(set(hyperparameters) - set(HYPERPARAMETERS))
    if unknown:
        raise ConfigError(_unknown_message(unknown[0]))
    values: dict[str, dict[str, object]] = {section.name: {} for section in dataclasses.fields(Config)}
    for name, raw in hyperparameters.items():
        section, item, kind = HYPERPARAMETERS[name]
        values[section][name] = _parse_value(name, raw, kind, item.metadata)
    hints = typing.get_type_hints(Config)
    config = Config(**{section: hints[section](**fields) for section, fields in values.items()})
    _check_consistency(config)
    return config


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, HYPERPARAMETERS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown hyperparameter '{name}'.{hint} Known hyperparameters: {', '.join(sorted(HYPERPARAMETERS))}."


def _parse_value(name: str, raw: object, kind: object, metadata: Mapping) -> object:
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        text = str(raw).strip().lower()
        if text not in choices:
            raise ConfigError(f"Hyperparameter '{name}' must be one of {', '.join(choices)}; got '{raw}'.")
        return text
    parser = {bool: _parse_bool, int: _parse_int, float: _parse_float, str: _parse_str}[kind]
    value = parser(name, raw)
    _check_range(name, value, metadata)
    return value


def _parse_bool(name: str, raw: object) -> bool:
    text = str(raw).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise ConfigError(f"Hyperparameter '{name}' must be true or false; got '{raw}'.")


def _parse_int(name: str, raw: object) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"Hyperparameter '{name}' must be an integer; got '{raw}'.")
    try:
        number = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"Hyperparameter '{name}' must be an integer; got '{raw}'.") from None
    if not number.is_integer():
        raise ConfigError(f"Hyperparameter '{name}' must be an integer; got '{raw}'.")
    return int(number)


def _parse_float(name: str, raw: object) -> float:
    if isinstance(raw, bool):
        raise ConfigError(f"Hyperparameter '{name}' must be a number; got '{raw}'.")
    try:
        number = float(str(raw).strip())
    except ValueError:
        raise ConfigError(f"Hyperparameter '{name}' must be a number; got '{raw}'.") from None
    if not math.isfinite(number):
        raise ConfigError(f"Hyperparameter '{name}' must be a finite number; got '{raw}'.")
    return number


def _parse_str(name: str, raw: object) -> str:
    text = str(raw).strip()
    if not text:
        raise ConfigError(f"Hyperparameter '{name}' must not be empty.")
    return text


def _check_range(name: str, value: object, metadata: Mapping) -> None:
    low, high = metadata.get("low"), metadata.get("high")
    if low is not None and (value < low or (metadata.get("low_open") and value == low)):
        bound = "greater than" if metadata.get("low_open") else "at least"
        raise ConfigError(f"Hyperparameter '{name}' must be {bound} {low}; got {value}.")
    if high is not None and value > high:
        raise ConfigError(f"Hyperparameter '{name}' must be at most {high}; got {value}.")


def _check_consistency(config: Config) -> None:
    """Rules that involve more than one hyperparameter."""
    nyquist = config.data.sample_rate / 2
    if config.features.fmax > nyquist:
        raise ConfigError(
            f"Hyperparameter 'fmax' ({config.features.fmax:g} Hz) is above the Nyquist frequency "
            f"of sample_rate={config.data.sample_rate} ({nyquist:g} Hz); lower fmax or raise sample_rate."
        )
    if config.features.fmin >= config.features.fmax:
        raise ConfigError(
            f"Hyperparameter 'fmin' ({config.features.fmin:g}) must be below fmax ({config.features.fmax:g})."
        )
    if config.features.hop_length > config.features.n_fft:
        raise ConfigError(
            f"Hyperparameter 'hop_length' ({config.features.hop_length}) must not exceed n_fft "
            f"({config.features.n_fft})."
        )
    samples = config.data.duration * config.data.sample_rate
    if samples < config.features.n_fft:
        raise ConfigError(
            f"Hyperparameter 'duration' ({config.data.duration:g} s) is shorter than one FFT window "
            f"(n_fft={config.features.n_fft} samples at {config.data.sample_rate} Hz)."
        )
    _check_augment(config)


def _check_augment(config: Config) -> None:
    for low, high in AUGMENT_RANGES:
        if getattr(config.augment, low) > getattr(config.augment, high):
            raise ConfigError(
                f"Hyperparameter '{low}' ({getattr(config.augment, low):g}) must not exceed "
                f"'{high}' ({getattr(config.augment, high):g})."
            )
    if config.augment.freq_mask_max_bins > config.features.n_mels:
        raise ConfigError(
            f"Hyperparameter 'freq_mask_max_bins' ({config.augment.freq_mask_max_bins}) must not exceed "
            f"n_mels ({config.features.n_mels})."
        )
