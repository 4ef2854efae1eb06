"""Windowed inference over long recordings: BirdCLEF submission rows and frame-wise events.

A recording is streamed (`stream_audio`'s blocks: decoded, downmixed and resampled to the training
sample rate a minute at a time, so memory stays flat in its length), cut into consecutive windows of
the training `duration` (windows straddle block edges; the last one is zero-padded, as training pads
short clips), and its windows run through the model in batches. Each window gives one row:
`<stem>_<end second>` and one probability per label, in `labels.json` order (`<stem>` becomes the
path relative to the input folder when two recordings share a stem). The SED head's frame-wise
output gives events: runs of frames at or above a threshold, merged across window boundaries.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import math
import os
import queue
import shutil
import tarfile
import tempfile
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from birdsed.atomic import atomic_open, existing_ancestor, fsync_directory
from birdsed.config import Config, from_hyperparameters
from birdsed.data.audio import AUDIO_SUFFIXES, AudioReadError, StreamReport, read_blocks
from birdsed.errors import ConfigError, UserError
from birdsed.export import ONNX_FILE, ONNX_INPUT, ONNX_OUTPUTS, export_onnx, window_samples
from birdsed.models import SEDModel, create_model
from birdsed.smoothing import smooth_windows
from birdsed.training.amp import MixedPrecision, mixed_precision
from birdsed.training.outputs import CONFIG_FILE, LABELS_FILE, MODEL_FILE, WEIGHTS_KEY

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
    if isinstance(sections, dict):  # where the training started from is a record, not a setting
        sections = {name: section for name, section in sections.items() if name != WEIGHTS_KEY}
    if not isinstance(sections, dict) or not all(isinstance(section, dict) for section in sections.values()):
        raise ModelDirError(f"{path}: expected the training config, by section")
    flat = {name: value for section in sections.values() for name, value in section.items()}
    try:
        return from_hyperparameters({**flat, "pretrained": "false"})
    except ConfigError as error:
        raise ModelDirError(f"{path}: {error}") from None


# ---- recordings and their row ids ----


@dataclass(frozen=True)
class AudioInput:
    """A recording to predict and the folder it was found in (None: named on the command line)."""

    path: Path
    root: Path | None = None


def find_audio_inputs(inputs: Sequence[Path]) -> list[AudioInput]:
    """Files as given (whatever their suffix), and audio files under directories, recursively;
    a recording reached twice (a file also inside a given folder) is predicted once."""
    found: list[AudioInput] = []
    seen: set[Path] = set()
    for path in inputs:
        children = sorted(child for child in path.rglob("*") if _is_audio(child)) if path.is_dir() else [path]
        for child in children:  # a missing or non-audio file is reported when it is read
            key = child.resolve()
            if key not in seen:
                seen.add(key)
                found.append(AudioInput(child, path if path.is_dir() else None))
    return found


def find_audio_files(inputs: Sequence[Path]) -> list[Path]:
    return [found.path for found in find_audio_inputs(inputs)]


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES


def file_ids(inputs: Sequence[AudioInput]) -> list[str]:
    """The row-id prefix of each recording: its stem (BirdCLEF's `<stem>_<end>`) when no other
    recording has that stem; otherwise its path relative to the folder it was found in (suffix kept,
    `/` separated), or the path as given where even that collides. Qualified ids are logged."""
    ids = [found.path.stem for found in inputs]
    for qualify in (_relative_name, lambda found: found.path.as_posix()):
        counts = Counter(ids)
        ids = [qualify(found) if counts[name] > 1 else name for found, name in zip(inputs, ids, strict=True)]
    qualified = [(found.path, name) for found, name in zip(inputs, ids, strict=True) if name != found.path.stem]
    if qualified:
        logger.warning(
            "%d recordings share a file stem with another one; their row ids use the path instead of the stem "
            "(e.g. %s -> %s_<end>); the other rows keep BirdCLEF's <stem>_<end>",
            len(qualified),
            qualified[0][0],
            qualified[0][1],
        )
    return ids


def _relative_name(found: AudioInput) -> str:
    return found.path.relative_to(found.root).as_posix() if found.root is not None else found.path.as_posix()


# ---- windows, rows and events ----


def cut_windows(waveform: np.ndarray, length: int) -> np.ndarray:
    """`[samples]` -> `[windows, length]`, consecutive, the last one zero-padded."""
    count = max(1, math.ceil(len(waveform) / length))
    padded = np.zeros(count * length, dtype=np.float32)
    padded[: len(waveform)] = waveform
    return padded.reshape(count, length)


def stream_windows(blocks: Iterable[np.ndarray], length: int) -> Iterator[np.ndarray]:
    """Consecutive windows of `length` samples from blocks of any size (a window may straddle blocks);
    the last one zero-padded, none for no samples. The same windows as `cut_windows` of the whole."""
    pending = np.zeros(0, dtype=np.float32)
    for block in blocks:
        joined = np.concatenate([pending, block]) if len(pending) else block
        whole = len(joined) // length
        yield from joined[: whole * length].reshape(whole, length)
        pending = joined[whole * length :]
    if len(pending):
        yield cut_windows(pending, length)[0]


def batched(windows: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """`[T]` windows -> `[B, T]` float32 batches of up to `batch_size`."""
    batch: list[np.ndarray] = []
    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


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


class EventTracker:
    """Runs of frames with probability >= `threshold`, per label, fed window by window.

    Runs continue across windows, so a call across a window boundary is one event. The frames of
    the newest window are held back until the next window or `finish`, because only at the end is
    it known which of them are padding after the end of the recording (those are dropped). Memory
    is one window of frames and one open run per label, whatever the recording's length.
    """

    def __init__(self, file: str, labels: Sequence[str], threshold: float, frame_seconds: float) -> None:
        self.file, self.labels, self.threshold, self.frame_seconds = file, list(labels), threshold, frame_seconds
        self.pending = np.zeros((0, len(self.labels)), dtype=np.float32)
        self.processed = 0  # frames before `pending`
        self.open_start = np.full(len(self.labels), -1)  # start frame of each label's open run, -1 none
        self.open_score = np.zeros(len(self.labels))
        self.closed: list[tuple[int, int, int, float]] = []  # (label, start, stop, score)

    def feed(self, frames: np.ndarray, hold: int) -> None:
        """Add frames `[F, K]` in time order, holding back the last `hold` (the newest window's)."""
        joined = np.concatenate([self.pending, frames]) if len(self.pending) else frames
        ready = max(0, len(joined) - hold)
        self._process(joined[:ready])
        self.pending = joined[ready:]

    def finish(self, seconds: float) -> list[Event]:
        """Close all runs at the end of a recording of `seconds`; events sorted by onset, then label."""
        limit = math.ceil(seconds / self.frame_seconds - 1e-9)
        self._process(self.pending[: max(0, limit - self.processed)])
        self.pending = self.pending[:0]
        for column in np.flatnonzero(self.open_start >= 0):
            self.closed.append((int(column), int(self.open_start[column]), self.processed, self.open_score[column]))
        self.open_start[:] = -1
        events = [
            Event(
                self.file,
                start * self.frame_seconds,
                min(stop * self.frame_seconds, seconds),
                self.labels[column],
                float(score),
            )
            for column, start, stop, score in self.closed
        ]
        return sorted(events, key=lambda event: (event.onset_s, event.label))

    def _process(self, frames: np.ndarray) -> None:
        if not len(frames):
            return
        offset, count = self.processed, len(frames)
        active = frames >= self.threshold
        for column in np.flatnonzero(active.any(axis=0) | (self.open_start >= 0)):
            runs = frame_runs(active[:, column])
            if self.open_start[column] >= 0:  # a run open at the end of the previous frames
                start = int(self.open_start[column])
                self.open_start[column] = -1
                if runs and runs[0][0] == 0:  # ... goes on into these frames
                    stop = runs.pop(0)[1]
                    runs.insert(0, (start - offset, stop))
                else:
                    self.closed.append((int(column), start, offset, float(self.open_score[column])))
            for start, stop in runs:
                score = float(frames[max(start, 0) : stop, column].max())
                if start < 0:
                    score = max(score, float(self.open_score[column]))
                if stop == count:  # still open: the next frames may continue it
                    self.open_start[column], self.open_score[column] = start + offset, score
                else:
                    self.closed.append((int(column), start + offset, stop + offset, score))
        self.processed += count


def detect_events(
    file: str, frames: np.ndarray, frame_seconds: float, seconds: float, labels: Sequence[str], threshold: float
) -> list[Event]:
    """Runs of frames `[F, K]` with probability >= `threshold`, per label, in seconds.

    `frames` are all windows' frames in order, so a run across a window boundary is one event.
    Frames of the padding after the end of the recording are dropped.
    """
    tracker = EventTracker(file, labels, threshold, frame_seconds)
    tracker.feed(frames, hold=len(frames))
    return tracker.finish(seconds)


# ---- the model over recordings ----


@dataclass(frozen=True)
class FilePrediction:
    path: Path
    row_ids: list[str]
    probabilities: np.ndarray  # [windows, K]
    events: list[Event]


BLOCK_SECONDS = 60.0  # audio decoded and resampled at a time: ~8 MB at 32 kHz, memory flat in the file's length


@dataclass
class Predictor:
    """Runs a loaded model over recordings, one recording at a time, its windows in batches."""

    loaded: LoadedModel
    device: torch.device
    batch_size: int = 16
    precision: MixedPrecision | None = None
    event_threshold: float | None = None  # None: no events
    block_seconds: float = BLOCK_SECONDS
    session: object | None = None  # an onnxruntime.InferenceSession of model.onnx: the ONNX backend
    smooth: int = 0  # each window's probabilities averaged with this many neighbours on each side

    @torch.inference_mode()
    def predict_windows(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        """`[N, T]` windows -> `clipwise` `[N, K]` and `framewise` `[N, T', K]` probabilities."""
        if self.session is not None:
            return self._predict_onnx(windows)
        clipwise, framewise = [], []
        for start in range(0, len(windows), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(windows[start : start + self.batch_size])).to(self.device)
            with self.precision.autocast() if self.precision else contextlib.nullcontext():
                outputs = self.loaded.model(batch)
            clipwise.append(torch.sigmoid(outputs["clipwise_logits"].float()).cpu())
            framewise.append(torch.sigmoid(outputs["framewise_logits"].float()).cpu())
        return {"clipwise": torch.cat(clipwise).numpy(), "framewise": torch.cat(framewise).numpy()}

    def _predict_onnx(self, windows: np.ndarray) -> dict[str, np.ndarray]:
        batches = [
            self.session.run(
                list(ONNX_OUTPUTS), {ONNX_INPUT: np.ascontiguousarray(windows[start : start + self.batch_size])}
            )
            for start in range(0, len(windows), self.batch_size)
        ]
        return {name: np.concatenate([batch[index] for batch in batches]) for index, name in enumerate(ONNX_OUTPUTS)}

    def predict_file(self, path: Path, file_id: str | None = None) -> FilePrediction:
        """Stream, window and predict one recording; raises `AudioReadError` for an unusable one."""
        report = StreamReport()
        blocks = read_blocks(path, self.loaded.cfg.data.sample_rate, self.block_seconds, report, nonfinite="zero")
        return self.predict_blocks(path, file_id or path.stem, blocks, report)

    def predict_blocks(
        self, path: Path, file_id: str, blocks: Iterable[np.ndarray], report: StreamReport
    ) -> FilePrediction:
        """The model over the windows of `blocks` (a recording's stream, which fills `report`)."""
        cfg = self.loaded.cfg
        length = window_samples(cfg)
        clipwise, tracker = [], None
        for batch in batched(stream_windows(blocks, length), self.batch_size):
            outputs = self.predict_windows(batch)
            clipwise.append(outputs["clipwise"])
            if self.event_threshold is not None:
                framewise = outputs["framewise"]  # [B, T', K]
                if tracker is None:
                    frame_seconds = cfg.data.duration / framewise.shape[1]
                    tracker = EventTracker(str(path), self.loaded.labels, self.event_threshold, frame_seconds)
                tracker.feed(framewise.reshape(-1, framewise.shape[2]), hold=framewise.shape[1])  # time order
        if report.samples == 0 or report.nonfinite == report.native_frames:
            raise AudioReadError("no audio samples" if report.samples == 0 else "every sample is non-finite")
        probabilities = smooth_windows(np.concatenate(clipwise), self.smooth)
        ids = row_ids(file_id, len(probabilities), cfg.data.duration)
        _log_repairs(path, report, ids, cfg.data.duration)
        seconds = report.samples / cfg.data.sample_rate
        events = tracker.finish(seconds) if tracker is not None else []
        return FilePrediction(path, ids, probabilities, events)


def _log_repairs(path: Path, report: StreamReport, ids: list[str], duration: float) -> None:
    """Say which samples were clipped or zeroed, once per recording, and which windows hold them."""
    if report.clipped:
        logger.warning("%s: %d samples beyond full scale clipped to [-1, 1]", path, report.clipped)
    if report.nonfinite:
        windows = sorted(
            {
                index
                for start, stop in report.nonfinite_spans
                for index in range(int(start // duration), max(int(start // duration) + 1, math.ceil(stop / duration)))
                if index < len(ids)
            }
        )
        named = ", ".join(ids[index] for index in windows[:10]) + (", ..." if len(windows) > 10 else "")
        logger.warning(
            "%s: %s set to 0; the rest of the recording is predicted as usual; windows with zeroed samples: %s",
            path,
            report.describe_nonfinite(),
            named,
        )


BACKENDS = ("torch", "onnx")


def default_batch_size(backend: str, device: torch.device) -> int:
    """Windows per forward pass, as measured fastest (`code/bench_inference.py predict`): on a CPU, small
    batches stay in cache (torch eager: 4; onnxruntime: 1, ~10 % ahead of 4); a GPU wants larger ones."""
    if backend == "onnx":
        return 1
    return 16 if device.type == "cuda" else 4


def create_predictor(
    loaded: LoadedModel,
    batch_size: int,
    amp: bool,
    event_threshold: float | None = None,
    backend: str = "torch",
    threads: int | None = None,
    model_dir: Path | None = None,
    smooth: int = 0,
) -> Predictor:
    """A predictor on `backend`: torch (eager, the loaded model) or onnx (onnxruntime on CPU, `model.onnx`
    of `model_dir`). `threads`: CPU threads of either backend (None: the library's default, all cores).
    `smooth`: average each window with `smooth` neighbours on each side (birdsed.smoothing)."""
    if backend not in BACKENDS:
        raise UserError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    device = next(loaded.model.parameters()).device
    if threads is not None:
        torch.set_num_threads(threads)
    if backend == "onnx":
        if amp:
            raise UserError("--amp applies to the torch backend; model.onnx runs in float32")
        session = open_onnx_session(model_dir, loaded, threads)
        return Predictor(loaded, torch.device("cpu"), batch_size, None, event_threshold, session=session, smooth=smooth)
    precision = mixed_precision("auto", device) if amp else None
    return Predictor(loaded, device, batch_size, precision, event_threshold, smooth=smooth)


def open_onnx_session(model_dir: Path | None, loaded: LoadedModel, threads: int | None) -> object:
    """An onnxruntime session of `model_dir/model.onnx`, all graph optimisations on. A model dir without
    one (trained before ONNX export, or its export failed) gets it exported from `model.pt` first."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    path = model_dir / ONNX_FILE if model_dir is not None else None
    if path is not None and path.is_file():
        return _session(onnxruntime, path, options)
    logger.warning("%s has no %s; exporting it from model.pt now (once; it takes a minute)", model_dir, ONNX_FILE)
    with tempfile.TemporaryDirectory(prefix="birdsed-onnx-") as directory:
        model = copy.deepcopy(loaded.model).cpu()
        try:
            export_onnx(model, window_samples(loaded.cfg), Path(directory) / ONNX_FILE)
        except Exception as error:  # noqa: BLE001 - the exporter raises many types; all mean "use --backend torch"
            raise UserError(
                f"Exporting {ONNX_FILE} failed ({type(error).__name__}: {error}); use --backend torch"
            ) from None
        return _session(onnxruntime, Path(directory) / ONNX_FILE, options)


def _session(onnxruntime: object, path: Path, options: object) -> object:
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's load errors have no common base class
        raise ModelDirError(f"{path}: onnxruntime cannot load it ({str(error).splitlines()[0][:300]})") from None


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


def check_outputs(
    out: Path, events_out: Path | None = None, recordings: Sequence[Path] = (), raven_out: Path | None = None
) -> None:
    """Refuse output paths that cannot be written, before any predicting (so no work is lost)."""
    if raven_out is not None:
        if raven_out.exists() and not raven_out.is_dir():
            raise UserError(f"--events-format raven writes tables into {raven_out}, an existing file; move it.")
        foreign = [p for p in raven_out.rglob("*") if p.is_file() and not p.name.endswith(RAVEN_SUFFIX)]
        if raven_out.is_dir() and foreign:
            raise UserError(
                f"--events-format raven replaces {raven_out}, which holds other files ({foreign[0].name}); "
                "move them or name other --events."
            )
    named = [("--out", out)] + ([("--events", events_out)] if events_out is not None else [])
    if events_out is not None and out.resolve() == events_out.resolve():
        raise UserError(f"--out and --events name the same file ({out}); give the events their own file.")
    inputs = {path.resolve() for path in recordings}
    for option, path in named:
        if path.is_dir():
            raise UserError(f"{option} {path} is an existing folder; name a file in it (e.g. {path / 'out.csv'}).")
        if path.resolve() in inputs:
            raise UserError(f"{option} {path} is one of the recordings to predict; name another file.")
        ancestor = existing_ancestor(path)
        if not ancestor.is_dir():
            raise UserError(f"{option} {path}: {ancestor} is a file, so the folder for the CSV cannot be created.")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise UserError(f"{option} {path}: no permission to write in {ancestor}.")


@dataclass
class Summary:
    predicted_files: int = 0
    skipped_files: int = 0
    windows: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def line(self) -> str:
        return f"predicted_files={self.predicted_files} skipped_files={self.skipped_files} windows={self.windows}"


def predict_to_csv(
    predictor: Predictor,
    paths: Sequence[Path | AudioInput],
    out: Path,
    events_out: Path | None = None,
    progress: bool = True,
    raven: bool = False,
) -> Summary:
    """Predict every recording, writing rows as they come; unusable recordings are reported and skipped.

    Recordings are decoded and resampled in a background thread (`Prefetcher`), so the next one is
    read while the model runs on this one. Both CSVs (and the Raven tables, `raven` with `events_out`)
    are written to temporary files and renamed at the end, so an interrupted run, or one that
    predicted nothing (`NothingPredictedError`), leaves nothing under the asked names.
    """
    inputs = [item if isinstance(item, AudioInput) else AudioInput(item) for item in paths]
    raven_out = raven_dir(events_out) if raven and events_out is not None else None
    check_outputs(out, events_out, [found.path for found in inputs], raven_out)
    ids = file_ids(inputs)
    summary = Summary()
    cfg = predictor.loaded.cfg
    prefetcher = Prefetcher(inputs, cfg.data.sample_rate, predictor.block_seconds)
    with _atomic_csv(out) as rows, _atomic_csv(events_out) as events, _atomic_dir(raven_out) as tables, prefetcher:
        rows.writerow(["row_id", *predictor.loaded.labels])
        if events is not None:
            events.writerow(EVENT_COLUMNS)
        streams = zip(prefetcher.streams(), ids, strict=True)
        for (found, blocks, report), file_id in tqdm(streams, total=len(ids), unit="file", disable=not progress):
            try:
                prediction = predictor.predict_blocks(found.path, file_id, blocks, report)
            except AudioReadError as error:
                logger.warning("Skipping %s: %s", found.path, error)
                summary.skipped_files += 1
                summary.skipped.append((found.path, str(error)))
                continue
            _write_prediction(rows, events, prediction)
            if tables is not None:
                write_raven_table(tables / raven_table_name(file_id), prediction.events, cfg, found.path)
            summary.predicted_files += 1
            summary.windows += len(prediction.row_ids)
        if not summary.predicted_files:
            raise NothingPredictedError(
                f"No recording could be predicted ({summary.skipped_files} skipped, see the warnings above); "
                f"{out} was not written."
            )
    return summary


class Prefetcher:
    """Streams the recordings' blocks (`read_blocks`) in one background thread, in order, at most
    `depth` blocks ahead: decoding and resampling of the next recording overlap the model's work on
    this one (libsndfile, soxr, torch and onnxruntime release the GIL while they compute)."""

    _END = object()

    def __init__(self, inputs: Sequence[AudioInput], sample_rate: int, block_seconds: float, depth: int = 3) -> None:
        self.inputs, self.sample_rate, self.block_seconds = list(inputs), sample_rate, block_seconds
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.reports = [StreamReport() for _ in self.inputs]
        self.thread = threading.Thread(target=self._produce, name="birdsed-prefetch", daemon=True)

    def __enter__(self) -> Prefetcher:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join()

    def streams(self) -> Iterator[tuple[AudioInput, Iterator[np.ndarray], StreamReport]]:
        """(recording, its blocks, its report) in input order; each block iterator raises the
        recording's `AudioReadError`. Blocks a consumer leaves unread are skipped."""
        for index, found in enumerate(self.inputs):
            blocks = self._blocks(index)
            yield found, blocks, self.reports[index]
            with contextlib.suppress(AudioReadError):
                for _ in blocks:  # the rest of an abandoned recording
                    pass

    def _blocks(self, index: int) -> Iterator[np.ndarray]:
        while True:
            item_index, item = self.queue.get()
            if item_index != index:
                raise RuntimeError(f"prefetch out of order: got recording {item_index}, expected {index}")
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _produce(self) -> None:
        for index, found in enumerate(self.inputs):
            try:
                for block in read_blocks(found.path, self.sample_rate, self.block_seconds, self.reports[index]):
                    if not self._put((index, block)):
                        return
                item = self._END
            except Exception as error:  # noqa: BLE001 - handed to the consumer, who raises it in its thread
                item = error
            if not self._put((index, item)):
                return

    def _put(self, item: tuple[int, object]) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


# ---- Raven Pro selection tables ----

RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Species",
    "Score",
    "Begin File",
)
RAVEN_SUFFIX = ".Table.1.selections.txt"  # Raven's own name for a table saved beside a sound file


def raven_dir(events_out: Path) -> Path:
    """Where the Raven tables of `--events events.csv` go: `events_raven/` beside it."""
    return events_out.with_name(f"{events_out.stem}_raven")


def raven_table_name(file_id: str) -> Path:
    """`<file id>.Table.1.selections.txt`, keeping a qualified id's folders, never leaving the table folder."""
    parts = [part for part in Path(file_id).parts if part not in ("", ".", "..", "/")]
    return Path(*parts).with_name(parts[-1] + RAVEN_SUFFIX)


def write_raven_table(path: Path, events: Sequence[Event], cfg: Config, recording: Path) -> None:
    """One recording's events as a Raven Pro selection table (tab-separated, one selection per event,
    spanning the mel front end's frequency range; the header alone when there are none)."""
    low, high = cfg.features.fmin, min(cfg.features.fmax, cfg.data.sample_rate / 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        table = csv.writer(handle, delimiter="\t", lineterminator="\n")
        table.writerow(RAVEN_COLUMNS)
        for number, event in enumerate(events, start=1):
            times = [f"{event.onset_s:.3f}", f"{event.offset_s:.3f}"]
            table.writerow(
                [
                    number,
                    "Spectrogram 1",
                    1,
                    *times,
                    f"{low:g}",
                    f"{high:g}",
                    event.label,
                    f"{event.score:.4f}",
                    recording.name,
                ]
            )


@contextlib.contextmanager
def _atomic_dir(path: Path | None) -> Iterator[Path | None]:
    """A temporary folder beside `path`, renamed to `path` on success (a previous one is replaced)."""
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield temporary
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(temporary, path)
            shutil.rmtree(old)
        else:
            os.replace(temporary, path)
        fsync_directory(path.parent)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _write_prediction(rows: csv.writer, events: csv.writer | None, prediction: FilePrediction) -> None:
    for row_id, probabilities in zip(prediction.row_ids, prediction.probabilities, strict=True):
        rows.writerow([row_id, *(f"{value:.6f}" for value in probabilities)])
    for event in prediction.events if events is not None else ():
        events.writerow(
            [event.file, f"{event.onset_s:.3f}", f"{event.offset_s:.3f}", event.label, f"{event.score:.4f}"]
        )


@contextlib.contextmanager
def _atomic_csv(path: Path | None) -> Iterator[csv.writer | None]:
    """A CSV writer on a temporary file unique to this call; fsynced and renamed to `path` on success."""
    if path is None:
        yield None
        return
    with atomic_open(path, "w", newline="", encoding="utf-8") as handle:
        yield csv.writer(handle)
