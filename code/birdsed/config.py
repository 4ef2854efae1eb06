"""One typed configuration, built from the job's hyperparameters in one place.

Hyperparameter names are flat (`epochs`, `n_mels`, ...): they are the public interface used by the
launcher, the docs and the tests. Each belongs to exactly one section below; its value, which
SageMaker delivers as a string (or JSON-decoded by the toolkit), is parsed by the field's type and
checked against the field's range. Unknown names are rejected by name. Every field's metadata holds
its `help` for users: docs/hyperparameters.md is generated from it (`make docs`, birdsed/config_doc.py),
and a test fails when a field has none.
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
from birdsed.parsing import parse_bool


def _range(low: float | None = None, high: float | None = None, *, low_open: bool = False, help: str = "") -> dict:
    return {"low": low, "high": high, "low_open": low_open, "help": help}


def _doc(help: str) -> dict:
    """Metadata of a field without a numeric range: its user-facing help (docs/hyperparameters.md)."""
    return {"help": help}


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = field(
        default="tf_efficientnetv2_s.in21k",
        metadata=_doc(
            "Any timm CNN name (e.g. `efficientnet_b0`, `tf_efficientnetv2_s.in21k`); its classifier and "
            "final pooling are removed. See docs/backbones.md for the tested ones."
        ),
    )
    pretrained: Literal["auto", "true", "false"] = field(
        default="auto",
        metadata=_doc(
            "Backbone weights: `auto` = the `pretrained` channel, else the Hugging Face Hub, else random (with a "
            "warning); `true` = the same but fail when neither has them; `false` = random, never looks "
            "(docs/pretrained.md)."
        ),
    )
    freeze_backbone: bool = field(
        default=False,
        metadata=_doc(
            "Train only the head: backbone weights and batch-norm statistics stay as loaded. For quick "
            "fine-tuning of pretrained weights on little data."
        ),
    )
    head: Literal["attention", "chrononet"] = field(
        default="attention",
        metadata=_doc(
            "`attention`: PANNs-style per-class attention pooling over time; `chrononet`: a bidirectional GRU"
            " before it."
        ),
    )
    drop_rate: float = field(default=0.2, metadata=_range(0.0, 0.95, help="Dropout in the SED head."))
    drop_path_rate: float = field(
        default=0.1, metadata=_range(0.0, 0.95, help="Stochastic depth in the backbone (timm's `drop_path_rate`).")
    )
    gru_hidden: int = field(
        default=256, metadata=_range(1, help="Width of the `chrononet` head's GRU (unused by `attention`).")
    )
    # prior: the classifier's bias starts at each class's log-odds in the training draws (RetinaNet's focal-loss
    # initialisation), so a fresh model outputs the class prior instead of 0.5 everywhere and the first hundred
    # steps are not spent pushing every output down (docs/recipe.md); zero: PyTorch's default initialisation.
    # zero stays the default: prior lowered the synthetic 2-process test's val_auc after 8 epochs (0.84 against
    # > 0.85) and real_birds' held-out AUC (b0 from scratch, 240 steps: 0.731 against 0.787).
    head_bias: Literal["prior", "zero"] = field(
        default="zero",
        metadata={"help": "Initial classifier bias: prior (each class's log-odds in the training data) or zero."},
    )


@dataclass(frozen=True)
class DataConfig:
    sample_rate: int = field(
        default=32000,
        metadata=_range(
            4000,
            192000,
            help=(
                "Hz; every recording is resampled to it (soxr). A waveform cache fixes it: the job's must equal "
                "the cache's."
            ),
        ),
    )
    duration: float = field(
        default=5.0,
        metadata=_range(
            0.0,
            120.0,
            low_open=True,
            help="Seconds per training crop and per prediction window (BirdCLEF scores 5 s windows).",
        ),
    )
    secondary_weight: float = field(
        default=0.5,
        metadata=_range(0.0, 1.0, help="Target value of a recording's `secondary_labels` (the primary label's is 1)."),
    )
    val_fraction: float = field(
        default=0.1,
        metadata=_range(
            0.0, 0.9, help="Fraction of recordings held out for validation when there is no `validation` channel."
        ),
    )
    num_workers: int = field(
        default=-1,
        metadata=_range(
            -1, 64, help="DataLoader workers per training process; -1: the host's CPUs shared between its processes."
        ),
    )
    # quick: header + the first and last second of each file; full: decode every file once at start.
    audio_check: Literal["quick", "full"] = field(
        default="quick",
        metadata=_doc(
            "Start-up check of every recording. `quick`: header + the first and last second; `full`: decode "
            "every file once (finds a NaN mid-file, the true length of VBR MP3s)."
        ),
    )
    max_skipped_fraction: float = field(
        default=0.1,
        metadata=_range(
            0.0,
            1.0,
            help=(
                "The job stops before training if more than this fraction of a channel's recordings is unusable "
                "(each skipped file is named in the log)."
            ),
        ),
    )
    # An epoch draws max(training recordings, min_epoch_crops) crops: one crop per recording per epoch
    # gave a 100-recording dataset 3 optimizer steps an epoch (docs/recipe.md). 0: one per recording.
    min_epoch_crops: int = field(
        default=512,
        metadata=_range(
            0,
            10_000_000,
            help=(
                "An epoch draws max(training recordings, this) crops, so small datasets still get optimizer "
                "steps. 0: one crop per recording per epoch."
            ),
        ),
    )
    # Where training crops start: random (uniform over the recording); energy (the crop with the most
    # high-frequency energy of `crop_candidates` random ones: a call rather than silence or wind); start
    # (uniform within the first 2 x duration seconds, where xeno-canto recordists usually start on the call).
    crop: Literal["random", "energy", "start"] = field(
        default="random",
        metadata=_doc(
            "Where training crops start. `random`: uniform; `energy`: the crop with the most high-frequency "
            "energy of `crop_candidates` random ones; `start`: uniform within the first 2 x `duration` "
            "seconds."
        ),
    )
    crop_candidates: int = field(
        default=4,
        metadata=_range(
            2, 64, help="Random crops compared by `crop=energy` (more: likelier to hold a call, more decoding)."
        ),
    )


@dataclass(frozen=True)
class FeatureConfig:
    n_mels: int = field(default=128, metadata=_range(8, 512, help="Mel bands of the spectrogram."))
    n_fft: int = field(
        default=2048,
        metadata=_range(
            64, 16384, help="FFT size in samples (at `sample_rate`); must not exceed `duration` x `sample_rate`."
        ),
    )
    hop_length: int = field(
        default=512, metadata=_range(16, 8192, help="Samples between spectrogram frames; at most `n_fft`.")
    )
    fmin: float = field(default=50.0, metadata=_range(0.0, help="Hz, lowest mel frequency; below `fmax`."))
    fmax: float = field(
        default=14000.0,
        metadata=_range(0.0, low_open=True, help="Hz, highest mel frequency; at most `sample_rate / 2`."),
    )
    top_db: float = field(
        default=80.0, metadata=_range(10.0, 200.0, help="dB of dynamic range kept per crop below its loudest bin.")
    )
    # Per-item standardisation drops each crop's absolute level (the recordist's gain and distance), which
    # soundscapes do not share with focal recordings; `fixed` keeps it (issue 18's ablation, docs/recipe.md).
    spec_norm: Literal["item", "fixed"] = field(
        default="item",
        metadata=_doc(
            "How the log-mel is scaled: item (each crop to mean 0, std 1: level-free) or fixed (dB by fixed "
            "constants: keeps each recording's absolute level)."
        ),
    )


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = field(
        default=30,
        metadata=_range(1, 100000, help="Training epochs (of round 0 when `pseudo_rounds` > 0; see `pseudo_epochs`)."),
    )
    batch_size: int = field(
        default=32,
        metadata=_range(
            1,
            4096,
            help=(
                "Crops per optimizer micro-step, per process: the effective batch is `batch_size` x "
                "`grad_accum_steps` x processes."
            ),
        ),
    )
    grad_accum_steps: int = field(
        default=1,
        metadata=_range(
            1, 1024, help="Micro-steps accumulated per optimizer step (a larger effective batch in the same memory)."
        ),
    )
    lr: float = field(default=1e-3, metadata=_range(0.0, 10.0, low_open=True, help="Peak learning rate of AdamW."))
    weight_decay: float = field(
        default=1e-2, metadata=_range(0.0, 10.0, help="AdamW weight decay (none on biases and norms).")
    )
    warmup_epochs: float = field(
        default=1.0,
        metadata=_range(0.0, 1000.0, help="Linear warmup length in epochs (fractions allowed), then cosine decay."),
    )
    min_lr_ratio: float = field(default=0.01, metadata=_range(0.0, 1.0, help="The cosine decay ends at `lr` x this."))
    max_grad_norm: float = field(default=5.0, metadata=_range(0.0, help="Gradient clipping by global norm; 0: off."))
    max_steps: int = field(default=0, metadata=_range(0, help="Stop after this many optimizer steps; 0: no limit."))
    # The averaged weights are what is validated, selected, checkpointed as best and delivered. timm's decay warmup
    # (1 - (1 + step)^-3/4, capped here) averages over about the last quarter of a short job's steps and over
    # 1 / (1 - ema_decay) steps of a long one, so one setting suits both.
    ema_decay: float = field(
        default=0.0,
        metadata=_range(
            0.0,
            0.99999,
            help=(
                "Exponential moving average of the weights (timm's ModelEmaV3), validated and saved instead of "
                "the raw weights; the decay warms up as 1 - (1 + step)^-0.75 to at most this value. 0: off."
            ),
        ),
    )
    nonfinite_patience: int = field(
        default=10,
        metadata=_range(
            1,
            100000,
            help=(
                "Consecutive optimizer steps with a non-finite loss or gradient (each skipped) before the job "
                "stops with a reason and no model."
            ),
        ),
    )
    freeze_backbone_epochs: int = field(
        default=0,
        metadata=_range(
            0,
            100000,
            help=(
                "Train the head alone (backbone frozen, batch-norm statistics included) for the first N epochs, "
                "then the whole model."
            ),
        ),
    )
    backbone_lr_scale: float = field(
        default=1.0,
        metadata=_range(
            0.0,
            100.0,
            low_open=True,
            help=(
                "The backbone's learning rate as a multiple of the head's (e.g. 0.1 to change pretrained "
                "weights more gently); both follow the same warmup and cosine schedule."
            ),
        ),
    )


@dataclass(frozen=True)
class LossConfig:
    loss: Literal["focal", "bce"] = field(
        default="focal",
        metadata=_doc("`focal` (focal binary cross-entropy) or `bce`; both weighted by class and recording weights."),
    )
    focal_gamma: float = field(
        default=2.0, metadata=_range(0.0, 10.0, help="Focusing exponent of the focal loss (0: plain BCE).")
    )
    frame_loss_weight: float = field(
        default=0.5,
        metadata=_range(
            0.0,
            10.0,
            help="Weight of the loss on each class's strongest frame, which trains the frame-wise (event) output.",
        ),
    )


@dataclass(frozen=True)
class AugmentConfig:
    """Batch augmentations on the training device; each has a probability `*_p` per item and a range.

    Defaults follow BirdCLEF practice (see docs/training.md). `augment=off` switches every one off.
    """

    augment: Literal["on", "off"] = field(
        default="on", metadata=_doc("`off` switches every augmentation below off (validation is never augmented).")
    )
    # From scratch on small data, full augmentation from the first step kept efficientnet_b0 under-fitted:
    # 240 steps scored 0.66 held-out AUC with it, 0.80 without (docs/recipe.md). Large datasets pass these
    # steps within their first epoch.
    augment_ramp_steps: int = field(
        default=200,
        metadata=_range(
            0,
            1000000,
            help=(
                "Every augmentation's probability rises linearly from 0 to its `*_p` over the first this many "
                "optimizer steps of the job; 0: full strength from the first step."
            ),
        ),
    )
    gain_p: float = field(
        default=0.5,
        metadata=_range(
            0.0, 1.0, help="Probability of a random gain, applied before mixing so mixed clips differ in level."
        ),
    )
    gain_db_min: float = field(default=-6.0, metadata=_range(-40.0, 40.0, help="Lowest random gain, dB."))
    gain_db_max: float = field(default=6.0, metadata=_range(-40.0, 40.0, help="Highest random gain, dB."))
    mix_p: float = field(
        default=0.5,
        metadata=_range(
            0.0,
            1.0,
            help=(
                "Probability of mixing an item with 1 or 2 other clips of the batch; target = the union of "
                "labels, weight = the smallest."
            ),
        ),
    )
    mix_max_clips: int = field(default=3, metadata=_range(2, 3, help="Clips summed by a mix, at most (2 or 3)."))
    # raw: summed at recorded levels (a quieter clip may be inaudible while its label stays in the union); equal:
    # each added clip at the item's audible level (+-6 dB). equal fitted slower on real_birds and held out less
    # (0.851 against 0.861, b0 from scratch, 30 epochs), so raw stays the default (docs/recipe.md).
    mix_levels: Literal["equal", "raw"] = field(
        default="raw",
        metadata={"help": "Levels of mixed clips: equal (each near the item's audible level) or raw (as recorded)."},
    )
    stretch_p: float = field(
        default=0.2,
        metadata=_range(0.0, 1.0, help="Probability of a time stretch (pitch kept; cut or padded back to `duration`)."),
    )
    stretch_min: float = field(
        default=0.8, metadata=_range(0.25, 4.0, help="Lowest stretch rate (log-uniform; > 1 is faster).")
    )
    stretch_max: float = field(default=1.25, metadata=_range(0.25, 4.0, help="Highest stretch rate."))
    pitch_p: float = field(
        default=0.2, metadata=_range(0.0, 1.0, help="Probability of a pitch shift (timing and length kept).")
    )
    pitch_semitones_min: float = field(
        default=-2.0, metadata=_range(-12.0, 12.0, help="Lowest pitch shift, semitones.")
    )
    pitch_semitones_max: float = field(
        default=2.0, metadata=_range(-12.0, 12.0, help="Highest pitch shift, semitones.")
    )
    background_p: float = field(
        default=0.5,
        metadata=_range(
            0.0,
            1.0,
            help=(
                "Probability of mixing in a recording of the `noise` channel (off, and logged, without the channel)."
            ),
        ),
    )
    background_snr_min: float = field(
        default=3.0, metadata=_range(-20.0, 60.0, help="Lowest SNR of background noise, dB.")
    )
    background_snr_max: float = field(
        default=20.0, metadata=_range(-20.0, 60.0, help="Highest SNR of background noise, dB.")
    )
    # band: signal and noise powers after a first-difference high-pass (what the model hears); crop: plain mean
    # square, where a crop's low-frequency wind sets the level and white noise buries its bird (docs/recipe.md).
    noise_snr_reference: Literal["band", "crop"] = field(
        default="band",
        metadata={"help": "How noise SNRs are measured: band (after a high-pass, what the model hears) or crop."},
    )
    noise_p: float = field(default=0.25, metadata=_range(0.0, 1.0, help="Probability of white Gaussian noise."))
    noise_snr_min: float = field(default=5.0, metadata=_range(-20.0, 60.0, help="Lowest SNR of white noise, dB."))
    noise_snr_max: float = field(default=20.0, metadata=_range(-20.0, 60.0, help="Highest SNR of white noise, dB."))
    pink_noise_p: float = field(default=0.25, metadata=_range(0.0, 1.0, help="Probability of pink (1/f) noise."))
    pink_noise_snr_min: float = field(default=5.0, metadata=_range(-20.0, 60.0, help="Lowest SNR of pink noise, dB."))
    pink_noise_snr_max: float = field(default=20.0, metadata=_range(-20.0, 60.0, help="Highest SNR of pink noise, dB."))
    wave_mask_p: float = field(
        default=0.2, metadata=_range(0.0, 1.0, help="Probability of silencing one span of the waveform.")
    )
    wave_mask_max_fraction: float = field(
        default=0.1, metadata=_range(0.0, 0.9, help="Longest silenced span, as a fraction of the crop.")
    )
    time_mask_p: float = field(
        default=0.3, metadata=_range(0.0, 1.0, help="Probability of zeroing one span of spectrogram frames.")
    )
    time_mask_max_fraction: float = field(
        default=0.1, metadata=_range(0.0, 0.9, help="Longest time mask, as a fraction of the frames.")
    )
    freq_mask_p: float = field(
        default=0.3, metadata=_range(0.0, 1.0, help="Probability of zeroing one span of mel bins.")
    )
    freq_mask_max_bins: int = field(
        default=16, metadata=_range(0, 512, help="Widest frequency mask in mel bins (at most `n_mels`).")
    )


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
    baseline: Literal["on", "off"] = field(
        default="on",
        metadata=_doc(
            "`on`: fit the log-mel statistics + logistic regression reference at start, log "
            "`baseline_val_auc` / `baseline_val_cmap` and warn at the end if the model does not beat it; "
            "`off`: skip it."
        ),
    )
    # Which validation metric picks the best epoch. auto: val_cmap, unless the validation set is so small
    # that padding flatters cmAP (random scores above birdsed.training.selection.PADDED_CHANCE_LIMIT): val_auc.
    # val_soundscape_auc / val_soundscape_cmap score the labelled `soundscape_validation` windows (docs/soundscapes.md).
    select_metric: Literal["auto", "val_cmap", "val_auc", "val_soundscape_auc", "val_soundscape_cmap"] = field(
        default="auto",
        metadata=_doc(
            "Validation metric that picks the best epoch (the delivered model). `auto`: `val_cmap`, or "
            "`val_auc` when random scores reach a padded cmAP above 0.5 on a small validation set; the "
            "soundscape metrics need the `soundscape_validation` channel."
        ),
    )
    # Which epoch's weights become the model. auto: the last epoch when random scores move the selection metric
    # by more than birdsed.training.selection.SELECTION_NOISE_LIMIT (sd) on this validation set, where the
    # highest epoch is mostly the luckiest (docs/recipe.md); else the best epoch by `select_metric`.
    select_epoch: Literal["auto", "best", "last"] = field(
        default="auto",
        metadata=_doc(
            "Which epoch becomes the model: `best` (highest `select_metric`), `last`, or `auto`: `last` when "
            "random scores move the selection metric by more than 0.02 (sd) on the validation set (with 16 classes: "
            "up to about 15 validation recordings per class), `best` otherwise and for the soundscape metrics."
        ),
    )


@dataclass(frozen=True)
class RunConfig:
    amp: Literal["auto", "off"] = field(
        default="auto",
        metadata=_doc("`auto`: fp16 + GradScaler on CUDA, bf16 autocast on CPUs with native bf16; `off`: float32."),
    )
    seed: int = field(
        default=42,
        metadata=_range(0, 2**31 - 1, help="Seed of the split, sampling, crops, augmentation and initialisation."),
    )
    checkpoint_keep: int = field(
        default=3,
        metadata=_range(1, 1000, help="Checkpoints kept in `/opt/ml/checkpoints` (the newest; plus `best_model.pt`)."),
    )
    nproc_per_node: int = field(
        default=0,
        metadata=_range(
            0,
            64,
            help=(
                "Training processes per host; 0: one per GPU (1 without GPUs). More than one starts torchrun and DDP."
            ),
        ),
    )
    sync_batchnorm: bool = field(
        default=False, metadata=_doc("SyncBatchNorm across processes (only with more than one).")
    )
    # auto: torchrun and DistributedDataParallel only for more than one process; always: also for one, so a
    # single GPU rehearses a multi-GPU job's code path (torchrun, NCCL, DDP, collectives), as the GPU check does.
    distributed: Literal["auto", "always"] = field(
        default="auto",
        metadata=_doc(
            "`auto`: torchrun + DistributedDataParallel only for more than one process; `always`: also for "
            "one (rehearses a multi-GPU job on one GPU)."
        ),
    )
    # channels_last made an efficientnet_b0 step 1.38x faster on 2 CPU cores, but a tf_efficientnetv2_s step 0.81x
    # as fast on an H100 in fp16 (docs/performance.md): one GPU figure does not flip the default, a knob lets
    # users keep the faster layout of their card.
    memory_format: Literal["channels_last", "contiguous"] = field(
        default="channels_last",
        metadata=_doc(
            "Layout of the model's weights and activations: `channels_last` (NHWC) or `contiguous` (NCHW, "
            "PyTorch's default). `code/bench.py` prints `channels_last_speedup` for your device and backbone."
        ),
    )
    # torch.compile of backbone + head: faster steps on a GPU after a minute or two of compiling.
    compile: bool = field(
        default=False,
        metadata=_doc(
            "`torch.compile` of backbone + head: faster GPU steps after a minute or two of compiling; "
            "checkpoints unchanged."
        ),
    )
    # model.onnx beside model.pt2 at the end of training (onnxruntime, CPU inference, Kaggle); takes
    # 15-60 s on the job's CPU; a failed export is logged and recorded, never fails the job.
    export_onnx: bool = field(
        default=True,
        metadata=_doc(
            "Write `model.onnx` beside `model.pt2` at the end (15-60 s on the job's CPU); a failed export is "
            "logged and recorded in metrics.json, never fails the job."
        ),
    )


@dataclass(frozen=True)
class SoundscapeConfig:
    """Pseudo-label rounds on the unlabelled `soundscapes` channel (docs/soundscapes.md).

    Round 0 trains on the focal data; each round r >= 1 starts from round r-1's best weights, predicts
    every soundscape window, keeps those whose top probability is >= `pseudo_threshold` with soft
    targets `p ** pseudo_power` (below `pseudo_min`: 0) and swaps them into training batches, each item
    with probability `pseudo_p`, for `pseudo_epochs` epochs (0: as many as `epochs`).
    """

    pseudo_rounds: int = field(
        default=0,
        metadata=_range(
            0,
            100,
            help=(
                "Pseudo-label rounds on the unlabelled `soundscapes` channel after round 0 (training on the focal"
                " data); 0: none."
            ),
        ),
    )
    pseudo_threshold: float = field(
        default=0.5,
        metadata=_range(0.0, 1.0, help="A soundscape window is kept when its top probability is at least this."),
    )
    pseudo_power: float = field(
        default=1.0,
        metadata=_range(
            0.0, 10.0, low_open=True, help="Soft targets are `p ** pseudo_power` (> 1 sharpens towards 0)."
        ),
    )
    pseudo_min: float = field(default=0.1, metadata=_range(0.0, 1.0, help="Soft targets below this become 0."))
    pseudo_p: float = field(
        default=0.4,
        metadata=_range(0.0, 1.0, help="Probability that a training item is swapped for a kept soundscape window."),
    )
    pseudo_epochs: int = field(
        default=0, metadata=_range(0, 100000, help="Epochs per pseudo-label round; 0: as many as `epochs`.")
    )
    # A round starts from trained weights: a full-size peak rate re-fits them to the focal clips first.
    pseudo_lr_scale: float = field(
        default=1.0,
        metadata=_range(
            0.0,
            1.0,
            low_open=True,
            help="Peak learning rate of the rounds >= 1, as a fraction of `lr` (round 0 uses `lr`).",
        ),
    )


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
# 16 kHz): the tests, the smoke checks and the memory profile use it. It looks for no pretrained weights
# (no download, no network): tests of the pretrained policy set `pretrained` themselves.
TINY_HYPERPARAMETERS = {
    "backbone": "test_efficientnet",
    "pretrained": "false",
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
    # Jobs of a few dozen steps: every augmentation at full strength from the first step, so that they run.
    "augment_ramp_steps": 0,
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
    value = parse_bool(raw)
    if value is None:
        raise ConfigError(f"Hyperparameter '{name}' must be true or false; got '{raw}'.")
    return value


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
    if config.model.freeze_backbone and config.optim.freeze_backbone_epochs:
        raise ConfigError(
            "Hyperparameter 'freeze_backbone_epochs' has no effect with freeze_backbone=true, which keeps the "
            "backbone frozen for the whole run; set one of them."
        )
    if config.optim.freeze_backbone_epochs >= config.optim.epochs:
        raise ConfigError(
            f"Hyperparameter 'freeze_backbone_epochs' ({config.optim.freeze_backbone_epochs}) must be less than "
            f"epochs ({config.optim.epochs}): otherwise the backbone never trains (that is freeze_backbone=true)."
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
