"""Soundscapes in a training job: the soundscape validation score and the pseudo-label rounds.

`training/job.py` calls the hooks here; with neither soundscape channel and `pseudo_rounds=0` they change
nothing. Rounds are spans of epochs: round 0 is epochs `1..epochs` on the focal data, round r >= 1
the next `pseudo_epochs`. A round starts from the previous round's best weights (`best_model.pt`
in the checkpoint dir, which then holds the best of the current round), with fresh optimizer
moments and its own warmup and cosine decay, and trains with that round's pseudo-labels swapped
into its batches. The round number is part of `Progress` and the pseudo-labels are part of every
checkpoint, so an interrupted round resumes with the same pseudo-labels.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from timm.scheduler import CosineLRScheduler
from timm.scheduler.scheduler import Scheduler
from torch.utils.data import DataLoader

from birdsed.config import Config
from birdsed.data import loaders
from birdsed.data.soundscapes import (
    UNLABELLED_CHANNEL,
    VALIDATION_CHANNEL,
    SoundscapeFile,
    labelled_windows,
    unlabelled_files,
)
from birdsed.errors import DataError, TrainingStopped
from birdsed.export import window_samples
from birdsed.optim import cosine_scheduler, warmup_steps
from birdsed.optim import create_scheduler as create_focal_scheduler
from birdsed.predict import LoadedModel, Predictor
from birdsed.sm_env import SageMakerEnv
from birdsed.training import ema, pseudo, selection
from birdsed.training.distributed import Distributed, unwrap
from birdsed.training.loop import Progress
from birdsed.training.signals import StopRequest
from birdsed.training.soundscape_validation import SoundscapeValidation, evaluate_soundscapes
from birdsed.training.soundscape_validation import load as load_validation

if TYPE_CHECKING:
    from birdsed.training.job import Job

logger = logging.getLogger(__name__)
metrics_logger = logging.getLogger("birdsed.metrics")

PSEUDO_LABELS_FILE = "pseudo_labels_round{round}.csv"
# Windows per forward pass when predicting soundscapes, as a multiple of `batch_size`: no gradients
# are kept, so a bigger batch fits where a training batch does.
PREDICT_BATCH_FACTOR = 2


@dataclass
class Soundscapes:
    validation: SoundscapeValidation | None  # the labelled windows, when the channel is given
    channel_dir: Path | None  # the unlabelled recordings' channel
    files: list[SoundscapeFile] | None  # its usable recordings, probed when pseudo_rounds > 0
    pseudo: pseudo.PseudoLabels | None = None  # the current round's pseudo-labels (round >= 1)


# ---- at the start of a job ----


def check_channels(cfg: Config, env: SageMakerEnv) -> None:
    """What the hyperparameters need from the channels, checked before any data is read."""
    selection.check_available(cfg.validation.select_metric, env.channel(VALIDATION_CHANNEL) is not None)
    rounds = cfg.soundscapes.pseudo_rounds
    if rounds and env.channel(UNLABELLED_CHANNEL) is None:
        raise DataError(
            f"pseudo_rounds={rounds} needs a '{UNLABELLED_CHANNEL}' channel of unlabelled recordings "
            "(e.g. BirdCLEF's train_soundscapes/); add it, or set pseudo_rounds=0."
        )
    if not rounds and env.channel(UNLABELLED_CHANNEL) is not None:
        logger.info("The '%s' channel is not used: pseudo_rounds=0", UNLABELLED_CHANNEL)


def build(cfg: Config, env: SageMakerEnv, group: Distributed, labels: list[str]) -> Soundscapes | None:
    """Read the soundscape channels (the first process checks them; each decodes its share)."""
    validation_dir, unlabelled_dir = env.channel(VALIDATION_CHANNEL), env.channel(UNLABELLED_CHANNEL)
    if validation_dir is None and unlabelled_dir is None:
        return None
    sample_rate, skip = cfg.data.sample_rate, cfg.data.max_skipped_fraction
    validation = None
    if validation_dir is not None:
        windows = group.computed_once(lambda: labelled_windows(validation_dir, labels, sample_rate, skip))
        validation = load_validation(windows, cfg, group)
    files = None
    if unlabelled_dir is not None and cfg.soundscapes.pseudo_rounds:
        files = group.computed_once(lambda: unlabelled_files(unlabelled_dir, sample_rate, skip))
        windows = sum(math.ceil(file.frames / window_samples(cfg)) for file in files)
        logger.info("soundscapes recordings=%d windows=%d (predicted once per round)", len(files), windows)
    return Soundscapes(validation, unlabelled_dir, files)


def pseudo_epochs(cfg: Config) -> int:
    return cfg.soundscapes.pseudo_epochs or cfg.optim.epochs


def end_epoch(cfg: Config, round_number: int) -> int:
    """The (0-based, exclusive) epoch at which round `round_number` ends."""
    return cfg.optim.epochs + round_number * pseudo_epochs(cfg)


class RoundScheduler(Scheduler):
    """timm's warmup + cosine (`optim.cosine_scheduler`), started afresh at every round.

    Round 0 spans the focal `epochs`, each later round `pseudo_epochs` (the last one cut at
    `max_steps`). Like the focal schedule it is a function of the update count over the whole job,
    so `step_update(step)` is all a resumed job needs; it keeps no state of its own.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> None:
        # (first update, that round's schedule, the scale of its rates)
        self.spans: list[tuple[int, CosineLRScheduler, float]] = []
        start = 0
        for number in range(cfg.soundscapes.pseudo_rounds + 1):
            length = (cfg.optim.epochs if number == 0 else pseudo_epochs(cfg)) * steps_per_epoch
            if cfg.optim.max_steps:
                length = min(length, cfg.optim.max_steps - start)
            if length <= 0:
                break
            warmup = warmup_steps(cfg.optim, steps_per_epoch, length)
            scale = 1.0 if number == 0 else cfg.soundscapes.pseudo_lr_scale
            self.spans.append((start, cosine_scheduler(optimizer, cfg.optim, length, warmup), scale))
            start += length
        super().__init__(optimizer, "lr", t_in_epochs=False)
        # The first update runs at the rates set here, before any `step_update` (timm's own schedulers set their
        # first rate when built too): without this, round 0 began at the full `lr` instead of warming up.
        self.step_update(0)

    def _get_lr(self, t: int) -> list[float]:
        start, schedule, scale = next((span for span in reversed(self.spans) if span[0] <= t), self.spans[0])
        return [rate * scale for rate in schedule._get_lr(t - start)]

    def state_dict(self) -> dict:
        return {}  # nothing beyond the update count (and no objects: checkpoints load with weights_only)


def create_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> Scheduler:
    """The focal schedule, restarted for every pseudo-label round."""
    if not cfg.soundscapes.pseudo_rounds:
        return create_focal_scheduler(optimizer, cfg.optim, steps_per_epoch)
    return RoundScheduler(optimizer, cfg, steps_per_epoch)


# ---- every epoch ----


def loaded_model(job: Job) -> LoadedModel:
    """The model being trained, as `code/predict.py`'s predictor takes it."""
    return LoadedModel(job.trainer.evaluated_model, job.data.labels, job.cfg)


def score_epoch(job: Job, result: dict, stop: StopRequest) -> dict | None:
    """The validation result with the soundscape metrics added; None when a stop was requested."""
    if job.soundscapes is None or job.soundscapes.validation is None:
        return result
    trainer = job.trainer
    scores = evaluate_soundscapes(
        job.soundscapes.validation,
        trainer.model,
        loaded_model(job),
        trainer.precision,
        trainer.device,
        trainer.distributed,
        lambda: stop.requested,
    )
    return None if scores is None else {**result, **scores}


def epoch_fields(job: Job, progress: Progress, result: dict) -> dict:
    """Fields the epoch record gains: the soundscape metrics, and the round when there are rounds."""
    fields = {name: result[name] for name in selection.SOUNDSCAPE_METRICS if name in result}
    if job.cfg.soundscapes.pseudo_rounds or progress.round:
        fields["round"] = progress.round
    return fields


def round_history(history: list[dict], round_number: int) -> list[dict]:
    """The records of one round (records without a round are round 0)."""
    return [record for record in history if record.get("round", 0) == round_number]


def log_round_choice(history: list[dict], best: dict, metric: str) -> None:
    """Say so when an earlier round's model beats the last round's: the rounds did not help this job."""
    last = max(record.get("round", 0) for record in history)
    chosen = best.get("round", 0)
    if chosen == last:
        return
    last_best = selection.best_record(round_history(history, last), metric)
    logger.warning(
        "The model is round %d's (%s=%.4f): the last round, %d, scored at most %s=%.4f; more rounds did not help "
        "this job (see docs/soundscapes.md for pseudo_threshold and pseudo_p)",
        chosen, metric, selection.selection_score(best, metric),
        last, metric, selection.selection_score(last_best, metric),
    )  # fmt: skip


# ---- between rounds ----


def next_round_due(job: Job, progress: Progress) -> bool:
    cfg = job.cfg
    return (
        progress.round < cfg.soundscapes.pseudo_rounds
        and progress.epoch >= end_epoch(cfg, progress.round)
        and not job.trainer.limit_reached(progress)
    )


def start_next_round(job: Job, progress: Progress, stop: StopRequest, best_weights: Path) -> None:
    """Best weights of the round that ended -> predict the soundscapes -> pseudo-labels -> the new round's data.

    The caller checkpoints right after: until then the last checkpoint (the end of the round) is
    where a restarted job continues, and it redoes this pass.
    """
    cfg, trainer, group = job.cfg, job.trainer, job.distributed
    number = progress.round + 1
    load_best_weights(job, best_weights, progress.round)
    predictor = Predictor(
        loaded_model(job), trainer.device, PREDICT_BATCH_FACTOR * cfg.optim.batch_size, trainer.precision
    )
    options = {**worker_options(job), "persistent_workers": False}
    labels = pseudo.label_round(
        number, predictor, job.soundscapes.files, window_samples(cfg), options, cfg.soundscapes, group,
        lambda: stop.requested,
    )  # fmt: skip
    if labels is None:
        raise TrainingStopped(
            f"Training was stopped by {stop.signal_name or 'a signal to another process'} while pseudo-labelling "
            f"the soundscapes for round {number}; the checkpoint of round {number - 1}'s end is kept and a "
            "restarted job redoes the pass. No model was written."
        )
    progress.round = number
    use_pseudo_labels(job, labels)
    trainer.optimizer.state.clear()  # fresh moments: the round starts from other weights
    trainer.optimizer.zero_grad(set_to_none=True)
    if group.is_main:
        path = job.env.output_data_dir / PSEUDO_LABELS_FILE.format(round=number)
        pseudo.write_csv(path, labels, job.data.labels, cfg.data.sample_rate, window_samples(cfg))
    metrics_logger.info(labels.summary())
    warn_about_repeats(cfg, len(labels), len(job.data.train), number)


# A kept window drawn more often than this per epoch is more memorised than learnt from.
REPEATS_WARNING = 4


def warn_about_repeats(cfg: Config, kept: int, items_per_epoch: int, number: int) -> None:
    """Say so when the round has no pseudo-labelled windows, or so few that each is drawn many times an epoch."""
    soundscapes = cfg.soundscapes
    if not kept:
        logger.warning(
            "Round %d: no soundscape window reached pseudo_threshold=%g; the round trains on the focal data only",
            number, soundscapes.pseudo_threshold,
        )  # fmt: skip
        return
    repeats = soundscapes.pseudo_p * items_per_epoch / kept
    if repeats > REPEATS_WARNING:
        logger.warning(
            "Round %d: only %d window(s) reached pseudo_threshold=%g, so each is drawn about %.0f times per epoch "
            "(pseudo_p=%g); lower pseudo_p or pseudo_threshold, or give more soundscapes",
            number, kept, soundscapes.pseudo_threshold, repeats, soundscapes.pseudo_p,
        )  # fmt: skip


def load_best_weights(job: Job, path: Path, round_number: int) -> None:
    """The best weights of the round that ended (the first process reads them; all load them)."""
    group = job.distributed
    state = torch.load(path, map_location="cpu", weights_only=True) if group.is_main and path.is_file() else None
    state = group.broadcast(state)
    if state is None:
        logger.warning("No best weights of round %d in %s: the next round starts from the latest", round_number, path)
        return
    unwrap(job.trainer.model).load_state_dict(state)
    if job.trainer.ema is not None:
        ema.reset(job.trainer.ema, state)


def worker_options(job: Job) -> dict:
    cfg, device = job.cfg, job.trainer.device
    per_node = job.env.process.local_world_size
    return loaders.worker_options(cfg.data.num_workers, device.type == "cuda", per_node, cfg.run.seed)


def use_pseudo_labels(job: Job, labels: pseudo.PseudoLabels) -> None:
    """Train on focal crops with `labels`' windows swapped in: a new dataset, sampler and loader."""
    cfg, group = job.cfg, job.distributed
    if job.soundscapes is None or job.soundscapes.channel_dir is None:
        raise DataError(
            f"The checkpoints are in pseudo-label round {labels.round}, whose windows come from the "
            f"'{UNLABELLED_CHANNEL}' channel: give the job that channel to resume, or use a new checkpoint location."
        )
    job.soundscapes.pseudo = labels
    windows = pseudo.PseudoWindowDataset(
        labels, job.soundscapes.channel_dir, len(job.data.labels), cfg.data.sample_rate, window_samples(cfg)
    )
    base = loaders.make_sampler(job.data, cfg, group.rank, group.world_size)
    sampler = pseudo.PseudoMixSampler(base, len(job.data.train), len(windows), cfg.soundscapes.pseudo_p, cfg.run.seed)
    dataset = pseudo.MixedDataset(job.data.train, windows)
    job.sampler = sampler
    # The old loader's persistent workers end when it is dropped here.
    job.train_loader = DataLoader(dataset, batch_size=cfg.optim.batch_size, sampler=sampler, **worker_options(job))


# ---- checkpoints ----


def checkpoint_entry(job: Job) -> dict | None:
    """The current round's pseudo-labels, for the checkpoint."""
    if job.soundscapes is None or job.soundscapes.pseudo is None:
        return None
    return job.soundscapes.pseudo.state_dict()


def resume(job: Job, state: dict, progress: Progress) -> None:
    """Continue a round >= 1 with the pseudo-labels saved in the checkpoint (not predicted anew)."""
    entry = state.get("pseudo_labels")
    if not progress.round or entry is None:
        return
    labels = pseudo.PseudoLabels.from_state_dict(entry)
    use_pseudo_labels(job, labels)
    logger.info("Resumed in round=%d with its %d pseudo-labelled windows", progress.round, len(labels))
