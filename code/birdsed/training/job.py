"""A whole training job: data, model, resume, the epoch loop, checkpoints and outputs.

With several processes (torchrun) every process runs this; only the first writes checkpoints
and outputs, and all of them resume from the checkpoint the first one reads.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import resource
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

from birdsed import export, reports
from birdsed.augment import create_augmentations
from birdsed.config import Config
from birdsed.data import loaders
from birdsed.data.dataset import CropDataset
from birdsed.data.noise import load_noise_bank
from birdsed.data.sampler import ShardSampler, WeightedEpochSampler
from birdsed.errors import DataError, TrainingStopped
from birdsed.losses import create_loss
from birdsed.models import create_model
from birdsed.models.backbone import check_backbone_name
from birdsed.models.weights import resolve_weights
from birdsed.optim import create_optimizer
from birdsed.sm_env import SageMakerEnv
from birdsed.training import checkpoint, distributed, ema, finetune, outputs, resume_config, rounds, selection
from birdsed.training.amp import mixed_precision
from birdsed.training.checkpoint import atomic_save, load_latest_checkpoint, save_checkpoint
from birdsed.training.distributed import Distributed, unwrap
from birdsed.training.loop import Progress, Trainer, evaluate, train_one_epoch
from birdsed.training.performance import configure_backends, optimise_model
from birdsed.training.signals import StopRequest

logger = logging.getLogger(__name__)
metrics_logger = logging.getLogger("birdsed.metrics")

BEST_WEIGHTS_FILE = "best_model.pt"  # the best epoch of the current round: where the next round starts
# With pseudo-label rounds, the best epoch of every round so far: what the job delivers. A round can score
# below an earlier one (few or wrong pseudo-labels), and the user asked for the best model, not the last round's.
BEST_OF_ALL_ROUNDS_FILE = "best_model_all_rounds.pt"


@dataclass
class Job:
    """Everything one training process works with, built once."""

    cfg: Config
    env: SageMakerEnv
    data: loaders.TrainingData
    trainer: Trainer
    sampler: WeightedEpochSampler
    train_loader: DataLoader
    val_loader: DataLoader
    truth: np.ndarray
    reporter: reports.Reporter | None  # TensorBoard and plots; only the process that writes outputs has one
    weights: str  # where the backbone's starting weights came from (PretrainedWeights.summary), recorded
    reference: selection.ValidationReference  # chance levels, baseline, the metric that picks the best epoch
    # A resumed mid-epoch augmentation state, applied once after the epoch's reseed.
    resumed_augment_state: dict | None = None
    soundscapes: rounds.Soundscapes | None = None  # the soundscape channels, when given

    @property
    def distributed(self) -> Distributed:
        return self.trainer.distributed


def run(cfg: Config, env: SageMakerEnv) -> dict:
    """Train as configured; returns the best epoch's record."""
    group = distributed.setup(env.process, always=cfg.run.distributed == "always")
    try:
        return train(cfg, env, group)
    finally:
        # After `train` returned, so the job (and the DDP wrapper, which holds the process group) is gone first.
        distributed.teardown()


def train(cfg: Config, env: SageMakerEnv, group: Distributed) -> dict:
    job = build_job(cfg, env, group)
    progress = resume(job)
    with StopRequest() as stop:
        train_epochs(job, progress, stop)
        while rounds.next_round_due(job, progress):
            rounds.start_next_round(job, progress, stop, job.env.checkpoint_dir / BEST_WEIGHTS_FILE)
            write_checkpoint(job, progress)
            train_epochs(job, progress, stop)
    best = finish(job, progress)
    # The others wait while the first writes the outputs, so that no process tears the group down under another
    # that still has the DDP wrapper and the group's connections: a process hung there twice in CI (development.md).
    group.barrier()
    return best


def build_job(cfg: Config, env: SageMakerEnv, group: Distributed) -> Job:
    seed_everything(cfg.run.seed)
    # Checks that need no data first: a wrong name should not wait for 25,000 files to be probed.
    check_backbone_name(cfg.model.backbone)
    rounds.check_channels(cfg, env)
    # Once per job: the first process looks (and downloads), the others wait for its answer.
    weights = group.computed_once(
        lambda: resolve_weights(cfg.model, env.channel("pretrained"), env.hub, env.checkpoint_dir)
    )
    # A process on another host may not see the first one's download: it starts random, and DDP copies rank 0's.
    local_file = weights.path if weights.path is not None and (group.is_main or weights.path.is_file()) else None
    configure_backends(group.device)
    data = group.computed_once(lambda: loaders.load_training_data(cfg, env.channel("train"), env.channel("validation")))
    model = create_model(cfg, len(data.labels), local_file, loaders.class_prior(data)).to(group.device)
    model = optimise_model(model, cfg.run.compile, cfg.run.memory_format)
    model = group.wrap(model, cfg.run.sync_batchnorm)
    # Same initial weights everywhere (DDP copies rank 0's), different dropout per process.
    seed_everything(cfg.run.seed + group.rank)
    trainer = build_trainer(cfg, model, data, group)
    noise_bank = load_noise_bank(env.channel("noise"), cfg.data.sample_rate, cfg.data.max_skipped_fraction)
    trainer.augment = create_augmentations(cfg.augment, cfg.run.seed, group.device, noise_bank, rank=group.rank)
    logger.info(
        "world_size=%d device=%s amp=%s parameters=%d batches_per_epoch=%d effective_batch_size=%d",
        group.world_size,
        group.device,
        trainer.precision.dtype,
        sum(p.numel() for p in model.parameters()),
        trainer.batches_per_epoch,
        cfg.optim.batch_size * cfg.optim.grad_accum_steps * group.world_size,
    )
    sampler = loaders.make_sampler(data, cfg, group.rank, group.world_size)
    pin_memory = group.device.type == "cuda"
    per_node = env.process.local_world_size
    val_sampler = ShardSampler(len(data.validation), group.rank, group.world_size)
    truth = primary_truth(data.validation, data.labels)
    soundscapes = rounds.build(cfg, env, group, data.labels)
    return Job(
        cfg=cfg,
        env=env,
        data=data,
        trainer=trainer,
        sampler=sampler,
        train_loader=loaders.train_loader(data, cfg, sampler, pin_memory, per_node),
        val_loader=loaders.validation_loader(data, cfg, val_sampler, pin_memory, per_node),
        truth=truth,
        reporter=create_reporter(env, data) if group.is_main else None,
        weights=weights.summary,
        reference=validation_reference(cfg, data, truth, group, per_node),
        soundscapes=soundscapes,
    )


def validation_reference(
    cfg: Config, data: loaders.TrainingData, truth: np.ndarray, group: Distributed, per_node: int
) -> selection.ValidationReference:
    """Computed by the first process (the baseline reads and fits crops), received by the others."""
    workers = loaders.resolve_num_workers(cfg.data.num_workers, per_node)
    return group.computed_once(lambda: selection.build_reference(cfg, data, truth, group.device, workers))


def create_reporter(env: SageMakerEnv, data: loaders.TrainingData) -> reports.Reporter:
    train_counts = reports.class_counts(data.train.recordings.primary_labels, data.labels)
    return reports.create_reporter(env.output_data_dir, data.labels, train_counts)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_trainer(cfg: Config, model: torch.nn.Module, data: loaders.TrainingData, group: Distributed) -> Trainer:
    precision = mixed_precision(cfg.run.amp, group.device)
    optimizer = create_optimizer(unwrap(model), cfg.optim)
    crops = loaders.epoch_crops(len(data.train), cfg.data.min_epoch_crops)
    batches = math.ceil(math.ceil(crops / group.world_size) / cfg.optim.batch_size)
    steps_per_epoch = math.ceil(batches / cfg.optim.grad_accum_steps)
    return Trainer(
        model=model,
        loss_fn=create_loss(cfg.loss, loaders.class_weight_tensor(data)).to(group.device),
        optimizer=optimizer,
        scheduler=rounds.create_scheduler(optimizer, cfg, steps_per_epoch),
        scaler=precision.grad_scaler(),
        precision=precision,
        device=group.device,
        batches_per_epoch=batches,
        grad_accum_steps=cfg.optim.grad_accum_steps,
        max_grad_norm=cfg.optim.max_grad_norm,
        max_steps=cfg.optim.max_steps,
        nonfinite_patience=cfg.optim.nonfinite_patience,
        distributed=group,
        ema=ema.create_ema(unwrap(model), cfg.optim.ema_decay),
    )


def primary_truth(dataset: CropDataset, labels: list[str]) -> np.ndarray:
    """Validation truth: the primary label only (a secondary bird may be absent from the crop)."""
    truth = np.zeros((len(dataset), len(labels)), dtype=np.int64)
    index = {label: position for position, label in enumerate(labels)}
    for row, label in enumerate(dataset.recordings.primary_labels):
        truth[row, index[label]] = 1
    return truth


def train_epochs(job: Job, progress: Progress, stop: StopRequest) -> None:
    """The epoch loop; on a stop request it checkpoints where it is and raises `TrainingStopped`."""
    trainer, cfg = job.trainer, job.cfg
    for epoch in range(progress.epoch, rounds.end_epoch(cfg, progress.round)):
        if trainer.limit_reached(progress):
            break
        if epoch != progress.epoch:
            progress.start_epoch(epoch)
        finetune.set_phase(trainer, cfg, epoch)
        job.sampler.set_epoch(epoch, start=progress.batches_done * cfg.optim.batch_size)
        trainer.augment.set_epoch(epoch)
        if job.resumed_augment_state is not None:
            trainer.augment.load_state_dict(job.resumed_augment_state)
            job.resumed_augment_state = None
        stopped = train_one_epoch(trainer, job.train_loader, progress, stop)
        result = None if stopped else evaluate(trainer, job.val_loader, job.truth, stop)
        result = None if result is None else rounds.score_epoch(job, result, stop)
        if result is None:
            stop_here(job, progress, stop)
        record = epoch_record(epoch, progress.epoch_loss, result, trainer.optimizer.param_groups[0]["lr"])
        record["val_score_std"] = selection.score_spread(result["scores"])
        record.update(rounds.epoch_fields(job, progress, result))
        # Kept in the history (so in every checkpoint): the best epoch's per-class AP survives a restart.
        record["per_class_ap"] = reports.per_class_ap(job.truth, result["scores"])
        metrics_logger.info(format_metrics(record))
        job.reference.check_epoch(record)
        end_of_epoch(job, progress, record)
        if job.reporter:
            job.reporter.log_epoch(record)
        log_memory(epoch)


def epoch_record(epoch: int, train_loss: float, result: dict, lr: float) -> dict:
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "val_loss": result["val_loss"],
        "val_cmap": result["val_cmap"],
        "val_auc": result["val_auc"],
        "lr": lr,
    }


def format_metrics(record: dict) -> str:
    """The one stable log line per epoch that the launcher's metric regexes read.

    Soundscape metrics (with a soundscape_validation channel) and the round (with pseudo_rounds)
    are appended after the fixed fields, so regexes written for the fixed fields still match.
    """
    line = (
        f"epoch={record['epoch']} train_loss={record['train_loss']:.6f} val_loss={record['val_loss']:.6f} "
        f"val_cmap={record['val_cmap']:.6f} val_auc={record['val_auc']:.6f} lr={record['lr']:.6e}"
    )
    if "val_soundscape_auc" in record:
        line += (
            f" val_soundscape_auc={record['val_soundscape_auc']:.6f}"
            f" val_soundscape_cmap={record['val_soundscape_cmap']:.6f}"
        )
    if "round" in record:
        line += f" round={record['round']}"
    return line


def end_of_epoch(job: Job, progress: Progress, record: dict) -> None:
    """Record the epoch, keep the best weights (of this round, and of the job), write a checkpoint."""
    progress.history.append(record)
    progress.start_epoch(record["epoch"])
    metric, rule = job.reference.metric, job.reference.epoch_rule
    # Both files follow `selection.chosen_record`, the rule `finish` and the next round use, so that the weights
    # kept are always those of the epoch whose scores are reported (without validation: the latest).
    round_best = newest_is_best(progress.history, metric, progress.round, rule)
    job_best = job.cfg.soundscapes.pseudo_rounds and newest_is_best(progress.history, metric, rule=rule)
    state = checkpoint_state(job, progress)  # collective: every process contributes its RNG state
    validated = validated_weights(state)
    if job.distributed.is_main:
        if round_best:
            atomic_save(validated, job.env.checkpoint_dir / BEST_WEIGHTS_FILE)
        if job_best:
            atomic_save(validated, job.env.checkpoint_dir / BEST_OF_ALL_ROUNDS_FILE)
        save_checkpoint(job.env.checkpoint_dir, state, progress.step, job.cfg.run.checkpoint_keep)


def validated_weights(state: dict) -> dict[str, torch.Tensor]:
    """A checkpoint's weights that validation scored: the average with `ema_decay`, else the raw ones."""
    return state["model"] if state.get("ema") is None else state["ema"]


def newest_is_best(history: list[dict], metric: str, round_number: int | None = None, rule: str = "best") -> bool:
    """Whether the newest record is the one `selection.chosen_record` picks, in its round or (None) in the job."""
    candidates = history if round_number is None else rounds.round_history(history, round_number)
    return selection.chosen_record(candidates, metric, rule) is history[-1]


def write_checkpoint(job: Job, progress: Progress) -> None:
    state = checkpoint_state(job, progress)  # collective
    if job.distributed.is_main:
        save_checkpoint(job.env.checkpoint_dir, state, progress.step, job.cfg.run.checkpoint_keep)


def stop_here(job: Job, progress: Progress, stop: StopRequest) -> None:
    state = checkpoint_state(job, progress)
    if job.distributed.is_main:
        save_checkpoint(job.env.checkpoint_dir, state, progress.step, job.cfg.run.checkpoint_keep)
    raise TrainingStopped(
        f"Training was stopped by {stop.signal_name or 'a signal to another process'} during epoch "
        f"{progress.epoch + 1} at step {progress.step}; its state was saved to the checkpoint directory and a "
        "restarted job resumes from there. No model was written."
    )


def log_memory(epoch: int) -> None:
    """Resident memory of this process and its DataLoader workers, to show it stays flat.

    `workers_rss_mb` counts the pages a forked worker shares with this process once per worker (16 workers
    of a CUDA process read as tens of GB); `workers_uss_mb` is what the workers hold alone.
    """
    process = psutil.Process()
    workers_rss, workers_uss = workers_memory(process)
    logger.info(
        "memory epoch=%d rss_mb=%.0f workers_rss_mb=%.0f peak_rss_mb=%.0f workers_uss_mb=%.0f",
        epoch + 1,
        process.memory_info().rss / 2**20,
        workers_rss / 2**20,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        workers_uss / 2**20,
    )


def workers_memory(process: psutil.Process) -> tuple[int, int]:
    """(RSS, USS) in bytes summed over the children; a worker that exits while it is read is left out."""
    rss = uss = 0
    for child in process.children(recursive=True):
        try:
            info = child.memory_full_info()  # USS reads /proc/PID/smaps: milliseconds per worker, once an epoch
        except psutil.Error:  # NoSuchProcess, ZombieProcess: the worker ended between listing and reading
            continue
        rss += info.rss
        uss += info.uss
    return rss, uss


def checkpoint_state(job: Job, progress: Progress) -> dict:
    """Everything needed to continue exactly; only tensors and plain values (weights_only loads it)."""
    trainer = job.trainer
    return {
        "model": unwrap(trainer.model).state_dict(),
        "ema": None if trainer.ema is None else trainer.ema.module.state_dict(),  # what is validated and kept
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "progress": dataclasses.asdict(progress),
        "labels": job.data.labels,
        "config": job.cfg.to_dict(),
        "world_size": job.distributed.world_size,
        "rng": job.distributed.gather(rng_state()),  # one entry per process, in rank order
        "augment": job.distributed.gather(trainer.augment.state_dict()),
        "weights": job.weights,
        "pseudo_labels": rounds.checkpoint_entry(job),
    }


def rng_state() -> dict:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume(job: Job) -> Progress:
    """Continue from the newest loadable checkpoint (the first process reads it, all use it)."""
    state = load_latest_checkpoint(job.env.checkpoint_dir) if job.distributed.is_main else None
    state = job.distributed.broadcast(state)
    if state is None:
        return Progress()
    check_compatible(state, job)
    trainer, optim = job.trainer, job.cfg.optim
    unwrap(trainer.model).load_state_dict(state["model"])
    resume_ema(trainer, state)
    resume_config.load_optimizer_state(
        trainer.optimizer,
        trainer.scheduler,
        state["optimizer"],
        unwrap(trainer.model),
        optim,
        state["progress"]["step"],
    )
    if state.get("weights", job.weights) != job.weights:  # a checkpoint from before birdsed recorded it keeps ours
        logger.info("resume: the run started from weights=%s; it continues from the checkpoint", state["weights"])
        job.weights = state["weights"]
    if state["scaler"] or not trainer.scaler.is_enabled():  # empty: saved with amp=off, now on (fresh scale)
        trainer.scaler.load_state_dict(state["scaler"])
    # The same number of processes continues exactly; a different number continues from the same
    # weights and position with fresh per-process randomness.
    # Checkpoints of earlier versions carry the round's best score; the history gives it now.
    progress = Progress(**{key: value for key, value in state["progress"].items() if key != "best_score"})
    saved_batch_size = state["config"]["optim"]["batch_size"]
    progress.batches_done = resume_config.batches_in_new_size(progress.batches_done, saved_batch_size, optim.batch_size)
    if state["world_size"] == job.distributed.world_size:
        restore_rng_state(state["rng"][job.distributed.rank])
        if progress.batches_done:
            job.resumed_augment_state = state["augment"][job.distributed.rank]
    rounds.resume(job, state, progress)
    logger.info("Resumed at epoch=%d batch=%d step=%d", progress.epoch + 1, progress.batches_done, progress.step)
    return progress


def resume_ema(trainer: Trainer, state: dict) -> None:
    """The saved average; a checkpoint without one (`ema_decay` was 0) starts it from the saved weights."""
    if trainer.ema is None:
        return
    if state.get("ema") is None:
        logger.info("resume: the checkpoint holds no weight average (ema_decay was 0); it starts from its weights")
        ema.reset(trainer.ema, state["model"])
    else:
        ema.reset(trainer.ema, state["ema"])


def check_compatible(state: dict, job: Job) -> None:
    """Refuse a checkpoint made for other classes or another model or input; log the settings that changed."""
    directory, labels = job.env.checkpoint_dir, job.data.labels
    saved_labels = list(state["labels"])
    if saved_labels != labels:
        gone, new = sorted(set(saved_labels) - set(labels)), sorted(set(labels) - set(saved_labels))
        difference = f"labels only there: {gone[:5]}; only in this dataset: {new[:5]}" if gone or new else "same labels"
        raise DataError(
            f"The checkpoints in {directory} were made for {len(saved_labels)} classes, this dataset has "
            f"{len(labels)} ({difference}). Use a new checkpoint location (a new --job-name) for a different dataset."
        )
    automatic_split = job.env.channel("validation") is None
    resume_config.check_settings(state["config"], job.cfg, directory, automatic_split)


def finish(job: Job, progress: Progress) -> dict:
    """Write the best weights (of every round), labels and config to the model dir, and the metrics history."""
    best = job.reference.delivered(progress.history)
    if not job.distributed.is_main:
        return best or {}
    env = job.env
    weights = final_weights(job, best)
    labels = job.data.labels
    outputs.write_model_dir(env.model_dir, weights, labels, job.cfg, job.weights)
    check = export.check_waveforms(job.data.validation, export.window_samples(job.cfg))  # validation crops
    exported = export.export_model_dir(env.model_dir, weights, labels, job.cfg, check)
    warnings = job.reference.end_of_job_warnings(best)
    summary = {
        "per_class_ap": reports.ap_by_label(labels, best),
        "export": exported,
        "steps": progress.step,
        "weights": job.weights,
        **job.reference.summary(),
        "warnings": warnings,
    }
    outputs.write_metrics(env.output_data_dir, progress.history, best, summary)
    job.reporter.finish(progress.history, best, job.reference.plot_lines())
    if best is not None:
        in_round = f" of round {best['round']}" if "round" in best else ""
        logger.info(
            "Model written to %s (%s%s: %s)", env.model_dir, job.reference.describe_choice(best), in_round,
            selection.describe_scores(best, job.reference.metric),
        )  # fmt: skip
        rounds.log_round_choice(progress.history, best, job.reference.metric)
    return best or {}


def final_weights(job: Job, best: dict | None) -> dict[str, torch.Tensor]:
    """The delivered epoch's weights: the current ones with `select_epoch=last`, else the best epoch's from
    `best_model.pt` (the current ones when there is none).

    An unreadable or foreign `best_model.pt` (a damaged copy back from S3) is moved aside, and the
    model comes from the best epoch's checkpoint if it is still kept, else from the newest one that
    loads: a finished run never ends in an internal error, nor without a model.
    """
    current = job.trainer.evaluated_model.state_dict()
    if job.reference.epoch_rule == "last":
        return current  # the last epoch's, even when a resumed run had kept another rule's best file
    name = BEST_OF_ALL_ROUNDS_FILE if job.cfg.soundscapes.pseudo_rounds else BEST_WEIGHTS_FILE
    path = job.env.checkpoint_dir / name
    if not path.is_file():
        return current
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
        problem = weights_mismatch(weights, current)
    except Exception as error:  # noqa: BLE001 - any failure to load means "use a checkpoint instead"
        problem = f"unreadable: {type(error).__name__}: {checkpoint.first_line(error)}"
    if problem is None:
        return weights
    checkpoint.move_aside(path, problem)
    found = checkpoint.load_epoch_checkpoint(job.env.checkpoint_dir, best["epoch"]) if best else None
    if found is None:
        logger.warning("No checkpoint loads either: the model is written with the weights of the last epoch")
        return current
    source, state = found
    epoch, best_epoch = state["progress"]["epoch"], best["epoch"] if best else None
    note = "the best epoch" if epoch == best_epoch else f"the newest that loads; the best epoch was {best_epoch}"
    logger.warning("The model is written with the weights of %s (epoch %d, %s)", source.name, epoch, note)
    return validated_weights(state)


def weights_mismatch(weights: object, expected: dict[str, torch.Tensor]) -> str | None:
    """Why `weights` are not a state dict of this model (other keys or shapes: another run's file), or None."""
    if not isinstance(weights, dict):
        return f"not a state dict ({type(weights).__name__})"
    if weights.keys() != expected.keys():
        return f"the weights of another model ({len(set(weights) ^ set(expected))} parameter names differ)"
    wrong = [name for name, tensor in expected.items() if getattr(weights[name], "shape", None) != tensor.shape]
    return f"the weights of another model ({wrong[0]} has another shape)" if wrong else None
