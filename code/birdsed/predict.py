"""Windowed inference over long recordings: BirdCLEF submission rows and frame-wise events.

A recording is decoded once (mono, resampled to the training sample rate), cut into consecutive
windows of the training `duration` (the last one zero-padded, as training pads short clips), and
its windows run through the model in batches. Each window gives one row: `<stem>_<end second>`
and one probability per label, in `labels.json` order. The SED head's frame-wise output gives
events: runs of frames at or above a threshold, merged across window boundaries.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from birdsed.config import Config, from_hyperparameters
from birdsed.data.audio import AUDIO_SUFFIXES, AudioReadError, decode, probe
from birdsed.errors import ConfigError, UserError
from birdsed.export import window_samples
from birdsed.models import SEDModel, create_model
from birdsed.training.amp import MixedPrecision, mixed_precision
from birdsed.training.outputs import CONFIG_FILE, LABELS_FILE, MODEL_FILE

logger = logging.getLogger(__name__)

EVENT_COLUMNS = ("file", "onset_s", "offset_s", "label", "score")


class ModelDirError(UserError):
    """`--model` is not a usable model dir or `model.tar.gz`."""


class NothingPredictedError(UserError):
    """No recording could be predicted; no CSV is written."""


# ---- the model: a dir or SageMaker's model.tar.gz ----


@dataclass(frozen=True)
class LoadedModel:
    model: SEDModel
    labels: list[str]
    cfg: Config


@contextlib.contextmanager
def open_model_dir(path: Path) -> Iterator[Path]:
    """The model dir itself, or a `model.tar.gz` extracted into a temporary dir removed afterwards."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise ModelDirError(f"--model {path}: no such model dir or model.tar.gz")
    with tempfile.TemporaryDirectory(prefix="birdsed-model-") as directory:
        extract_archive(path, Path(directory))
        yield model_root(Path(directory))


def extract_archive(archive: Path, destination: Path) -> None:
    """Extract a tar archive, refusing links, absolute paths and `..` outright; tarfile's "data"
    filter stays on as a second line of defence (device files, permissions)."""
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                problem = _unsafe_member(member)
                if problem:
                    raise ModelDirError(f"--model {archive}: refusing an archive member {member.name!r} ({problem})")
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ModelDirError(f"--model {archive}: not a readable tar archive ({error})") from None


def _unsafe_member(member: tarfile.TarInfo) -> str | None:
    if member.issym() or member.islnk():
        return "a link"
    if member.name.startswith(("/", "\\")) or Path(member.name).is_absolute():
        return "an absolute path"
    if ".." in Path(member.name).parts:
        return "a path outside the archive"
    return None


def model_root(directory: Path) -> Path:
    """SageMaker's archive has the files at its root; a tarred folder has them one level down."""
    children = [child for child in directory.iterdir() if not child.name.startswith(".")]
    if not (directory / MODEL_FILE).exists() and len(children) == 1 and children[0].is_dir():
        return children[0]
    return directory


def load_model(model_dir: Path, device: torch.device) -> LoadedModel:
    """Rebuild the trained model from `config.json`, `labels.json` and `model.pt` (weights only)."""
    missing = [name for name in (MODEL_FILE, LABELS_FILE, CONFIG_FILE) if not (model_dir / name).is_file()]
    if missing:
        raise ModelDirError(f"--model {model_dir}: missing {', '.join(missing)} (expected a birdsed training output)")
    labels = _read_json(model_dir / LABELS_FILE)
    if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
        raise ModelDirError(f"{model_dir / LABELS_FILE}: expected a non-empty list of label names")
    cfg = config_from_json(_read_json(model_dir / CONFIG_FILE), model_dir / CONFIG_FILE)
    try:
        state_dict = torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - unpickling garbage raises many types; all mean "not weights"
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}" if str(error) else type(error).__name__
        raise ModelDirError(f"{model_dir / MODEL_FILE}: cannot load the weights, not a state_dict ({reason})") from None
    model = create_model(cfg, len(labels))
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ModelDirError(
            f"{model_dir / MODEL_FILE}: the weights do not fit the model of config.json and labels.json ({error})"
        ) from None
    return LoadedModel(model=model.to(device).eval(), labels=labels, cfg=cfg)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelDirError(f"{path}: not readable JSON ({error})") from None


def config_from_json(sections: object, path: Path) -> Config:
    """`Config.to_dict()` (by section) back to a validated Config; never looks up pretrained weights."""
    if not isinstance(sections, dict) or not all(isinstance(section, dict) for section in sections.values()):
        raise ModelDirError(f"{path}: expected the training config, by section")
    flat = {name: value for section in sections.values() for name, value in section.items()}
    try:
        return from_hyperparameters({**flat, "pretrained": "false"})
    except ConfigError as error:
        raise ModelDirError(f"{path}: {error}") from None


# ---- recordings, windows, rows and events ----


def find_audio_files(inputs: Sequence[Path]) -> list[Path]:
    """Files as given (whatever their suffix), and audio files under directories, recursively."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found.extend(sorted(child for child in path.rglob("*") if _is_audio(child)))
        else:
            found.append(path)  # a missing or non-audio file is reported when it is read
    return found


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES


def cut_windows(waveform: np.ndarray, length: int) -> np.ndarray:
    """`[samples]` -> `[windows, length]`, consecutive, the last one zero-padded."""
    count = max(1, math.ceil(len(waveform) / length))
    padded = np.zeros(count * length, dtype=np.float32)
    padded[: len(waveform)] = waveform
    return padded.reshape(count, length)


def format_seconds(seconds: float) -> str:
    """`5`, `10` for whole seconds; `2.5` (up to milliseconds) otherwise, so row ids stay unique."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def row_ids(stem: str, windows: int, duration: float) -> list[str]:
    """BirdCLEF row ids `<stem>_<end second of the window>`."""
    return [f"{stem}_{format_seconds((index + 1) * duration)}" for index in range(windows)]


@dataclass(frozen=True)
class Event:
    file: str
    onset_s: float
    offset_s: float
    label: str
    score: float


def frame_runs(active: np.ndarray) -> list[tuple[int, int]]:
    """`[start, stop)` of each run of True in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[False], active, [False]]).astype(np.int8)))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def detect_events(
    file: str, frames: np.ndarray, frame_seconds: float, seconds: float, labels: Sequence[str], threshold: float
) -> list[Event]:
    """Runs of frames `[F, K]` with probability >= `threshold`, per label, in seconds.

    `frames` are all windows' frames in order, so a run across a window boundary is one event.
    Frames of the padding after the end of the recording are dropped.
    """
    frames = frames[: math.ceil(seconds / frame_seconds - 1e-9)]
    events = []
    for column, label in enumerate(labels):
        for start, stop in frame_runs(frames[:, column] >= threshold):
            onset, offset = start * frame_seconds, min(stop * frame_seconds, seconds)
            events.append(Event(file, onset, offset, label, float(frames[start:stop, column].max())))
    return sorted(events, key=lambda event: (event.onset_s, event.label))


# ---- the model over recordings ----


@dataclass(frozen=True)
class FilePrediction:
    path: Path
    row_ids: list[str]
    probabilities: np.ndarray  # [windows, K]
    events: list[Event]


@dataclass
class Predictor:
    """Runs a loaded model over recordings, one recording at a time, its windows in batches."""

    loaded: LoadedModel
    device: torch.device
    batch_size: int = 16
    precision: MixedPrecision | None = None
    event_threshold: float | None = None  # None: no events

    @torch.inference_mode()
    def predict_windows(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """`[N, T]` windows -> `clipwise` `[N, K]` and `framewise` `[N, T', K]` probabilities."""
        clipwise, framewise = [], []
        for start in range(0, len(windows), self.batch_size):
            batch = torch.from_numpy(windows[start : start + self.batch_size]).to(self.device)
            with self.precision.autocast() if self.precision else contextlib.nullcontext():
                outputs = self.loaded.model(batch)
            clipwise.append(torch.sigmoid(outputs["clipwise_logits"].float()).cpu())
            framewise.append(torch.sigmoid(outputs["framewise_logits"].float()).cpu())
        return {"clipwise": torch.cat(clipwise).numpy(), "framewise": torch.cat(framewise).numpy()}

    def predict_file(self, path: Path) -> FilePrediction:
        """Decode, window and predict one recording; raises `AudioReadError` for an unusable one."""
        cfg = self.loaded.cfg
        probe(path)
        waveform = decode(path, cfg.data.sample_rate)
        if len(waveform) == 0:
            raise AudioReadError("no audio samples")
        windows = cut_windows(waveform, window_samples(cfg))
        outputs = self.predict_windows(windows)
        events = []
        if self.event_threshold is not None:
            framewise = outputs["framewise"]  # [N, T', K]
            frame_seconds = cfg.data.duration / framewise.shape[1]
            frames = framewise.reshape(-1, framewise.shape[2])  # [N * T', K], in time order
            seconds = len(waveform) / cfg.data.sample_rate
            events = detect_events(str(path), frames, frame_seconds, seconds, self.loaded.labels, self.event_threshold)
        return FilePrediction(path, row_ids(path.stem, len(windows), cfg.data.duration), outputs["clipwise"], events)


def create_predictor(
    loaded: LoadedModel, batch_size: int, amp: bool, event_threshold: float | None = None
) -> Predictor:
    device = next(loaded.model.parameters()).device
    precision = mixed_precision("auto", device) if amp else None
    return Predictor(loaded, device, batch_size, precision, event_threshold)


def default_device(name: str = "auto") -> torch.device:
    """`auto`: CUDA when available, else CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


# ---- writing the CSVs ----


@dataclass
class Summary:
    predicted_files: int = 0
    skipped_files: int = 0
    windows: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def line(self) -> str:
        return f"predicted_files={self.predicted_files} skipped_files={self.skipped_files} windows={self.windows}"


def predict_to_csv(
    predictor: Predictor, paths: Sequence[Path], out: Path, events_out: Path | None = None, progress: bool = True
) -> Summary:
    """Predict every recording, writing rows as they come; unusable recordings are reported and skipped.

    Both CSVs are written to temporary files and renamed at the end, so an interrupted run, or one
    that predicted nothing (`NothingPredictedError`), leaves no CSV under the asked name.
    """
    summary = Summary()
    with _atomic_csv(out) as rows, _atomic_csv(events_out) as events:
        rows.writerow(["row_id", *predictor.loaded.labels])
        if events is not None:
            events.writerow(EVENT_COLUMNS)
        for path in tqdm(paths, unit="file", disable=not progress, dynamic_ncols=True):
            try:
                prediction = predictor.predict_file(path)
            except AudioReadError as error:
                logger.warning("Skipping %s: %s", path, error)
                summary.skipped_files += 1
                summary.skipped.append((path, str(error)))
                continue
            _write_prediction(rows, events, prediction)
            summary.predicted_files += 1
            summary.windows += len(prediction.row_ids)
        if not summary.predicted_files:
            raise NothingPredictedError(
                f"No recording could be predicted ({summary.skipped_files} skipped, see the warnings above); "
                f"{out} was not written."
            )
    return summary


def _write_prediction(rows: csv.writer, events: csv.writer | None, prediction: FilePrediction) -> None:
    for row_id, probabilities in zip(prediction.row_ids, prediction.probabilities, strict=True):
        rows.writerow([row_id, *(f"{value:.6f}" for value in probabilities)])
    for event in prediction.events if events is not None else ():
        events.writerow(
            [event.file, f"{event.onset_s:.3f}", f"{event.offset_s:.3f}", event.label, f"{event.score:.4f}"]
        )


@contextlib.contextmanager
def _atomic_csv(path: Path | None) -> Iterator[csv.writer | None]:
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            yield csv.writer(handle)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
